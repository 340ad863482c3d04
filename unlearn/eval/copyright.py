"""Evaluation of the copyright setting (``harry_potter``): does the model still complete the book,
and does it still speak the language?

- ``completion_bleu`` (sacrebleu BLEU of each prompt's completion, 0–100, averaged over prompts) and
  ``completion_rouge`` (ROUGE-L recall, Porter stemmer) of the greedy continuation of each book
  prompt against the true continuation, cut to the same number of tokens (lower is better): the
  SOUL/FLAT/SGA copyright protocol (their ``eval_leakage_rate``); Yao et al., 2023 report BLEU on
  200 Harry Potter prompts;
- ``general_ppl``: perplexity on general text (WikiText-style; lower is better), and
  ``forget_ppl``: perplexity on the forget text (higher means less of it is left);
- collapse (Yao et al. saw a perplexity of ~6e72 after unlearning): ``collapsed`` is 1 when a
  metric is non-finite, the general perplexity is above ``max_ppl`` (default: the vocabulary size,
  i.e. worse than guessing uniformly) or above ``max_ppl_ratio`` × the target model's, or the
  completions degenerate into repetition (mean repeated-3-gram fraction above ``max_repetition``);
  ``collapsed_<reason>`` says which, and the record's ``notes.collapse`` says it in words. A
  collapsed model is evaluated and reported like any other, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from torch import nn

from unlearn.eval import metrics as M
from unlearn.eval.generate import first_tokens, greedy, prompt_budget
from unlearn.eval.scoring import context_length, text_perplexity
from unlearn.evaluator import EvalContext
from unlearn.utils.progress import Steps, say

Row = Mapping[str, Any]
REASONS = ("nonfinite", "ppl", "repetition")

DIRECTIONS = {
    "completion_bleu": -1,
    "completion_rouge": -1,
    "general_ppl": -1,
    "forget_ppl": +1,
    "repetition": -1,
    "collapsed": -1,
    **{f"collapsed_{r}": -1 for r in REASONS},
    "collapsed_diverged": -1,  # training diverged (the divergence guard stopped it)
}


@dataclass
class CopyrightEvaluator:
    """Completion, perplexity and collapse metrics (module docstring) on the splits ``prompts``
    (``prompt``/``continuation`` rows), ``general`` and ``forget_text`` (``text`` rows)."""

    reports_diverged: ClassVar[bool] = True  # a diverged run is evaluated, and counts as collapsed
    name: str = "harry_potter"
    prompts: str = "prompts"
    general: str = "general"
    forget_text: str | None = "forget"
    max_new_tokens: int = 128
    max_prompt_tokens: int | None = None
    max_length: int = 1024
    max_rows: int | None = None
    batch_size: int = 8
    max_ppl: float | None = None
    max_ppl_ratio: float | None = 100.0
    max_repetition: float = 0.5
    repetition_n: int = 3
    general_tasks: Sequence[str] = ()  # lm-eval task names for zero-shot utility (piqa, arc_easy, ...)
    general_tasks_path: str | None = None  # a folder of lm-eval task YAML files (local data, offline)
    general_tasks_limit: int | None = None  # questions per task (None: all)
    directions: dict[str, int] = field(default_factory=lambda: dict(DIRECTIONS))

    def __post_init__(self) -> None:
        if self.max_ppl is not None and not self.max_ppl > 1:
            raise ValueError(f"benchmark.eval.max_ppl must be > 1 or null, got {self.max_ppl!r}")
        if not 0 <= self.max_repetition <= 1:
            raise ValueError(f"benchmark.eval.max_repetition must be in [0, 1], got {self.max_repetition!r}")

    def _rows(self, splits: Mapping[str, Sequence[Row]], name: str) -> list[Row]:
        if name not in splits:
            raise ValueError(f"benchmark {self.name!r} has no split {name!r} to evaluate (splits: {sorted(splits)})")
        rows = list(splits[name])
        return rows if self.max_rows is None else rows[: self.max_rows]

    def ppl_limit(self, tokenizer: Any, target: Mapping[str, Any] | None) -> float:
        """The general perplexity above which the model counts as collapsed."""
        limit = float(self.max_ppl) if self.max_ppl is not None else float(len(tokenizer))
        base = (target or {}).get("metrics", {}).get("general_ppl")
        if self.max_ppl_ratio is not None and base is not None and np.isfinite(base):
            limit = min(limit, self.max_ppl_ratio * float(base))
        return limit

    def completions(self, model: nn.Module, tok: Any, rows: Sequence[Row]) -> tuple[list[str], list[str]]:
        """Greedy continuations of the prompts and the references cut to as many tokens."""
        n = self.max_new_tokens
        outputs = greedy(
            model,
            tok,
            [r["prompt"] for r in rows],
            n,
            self.batch_size,
            max_prompt_tokens=prompt_budget(model, n, self.max_prompt_tokens),
        )
        return outputs, [first_tokens(tok, r["continuation"], n) for r in rows]

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        """Returns ``{"metrics", "arrays", "notes"}``; ``ctx.target`` (the target model's record)
        makes the perplexity limit relative. ``ctx.diverged`` (the divergence guard's reason: the
        weights are the last finite ones) counts as a collapse, ``collapsed_diverged``. ``ctx.fmt``
        and ``ctx.oracle`` are unused (raw-text prompts)."""
        model, tokenizer, splits = ctx.model, ctx.tokenizer, ctx.splits
        prompts, general = self._rows(splits, self.prompts), self._rows(splits, self.general)
        n_ctx = context_length(model)
        max_len = min(self.max_length, n_ctx) if n_ctx else self.max_length
        with Steps(f"eval {self.name}", total=3) as steps:
            outputs, refs = self.completions(model, tokenizer, prompts)
            steps.advance("completions")
            metrics = {
                "general_ppl": text_perplexity(model, tokenizer, [r["text"] for r in general], max_len, self.batch_size)
            }
            steps.advance("general perplexity")
            if self.forget_text is not None:
                forget = self._rows(splits, self.forget_text)
                metrics["forget_ppl"] = text_perplexity(
                    model, tokenizer, [r["text"] for r in forget], max_len, self.batch_size
                )
            steps.advance("forget perplexity")
        rouge = M.rouge_l(outputs, refs, "recall", use_stemmer=True)  # SOUL/FLAT's eval_leakage_rate
        repetition = np.array([M.repeated_ngram_fraction(o, self.repetition_n) for o in outputs])
        metrics.update(
            completion_bleu=M.mean_example_bleu(outputs, refs),
            completion_rouge=float(np.mean(rouge)),
            repetition=float(np.mean(repetition)),
        )
        reasons = M.collapse_reasons(
            metrics,
            metrics["general_ppl"],
            self.ppl_limit(tokenizer, ctx.target),
            metrics["repetition"],
            self.max_repetition,
        )
        if ctx.diverged:
            reasons["diverged"] = f"training diverged ({ctx.diverged})"
            metrics["collapsed_diverged"] = 1.0
        metrics["collapsed"] = float(bool(reasons))
        metrics.update({f"collapsed_{r}": float(r in reasons) for r in REASONS})
        if reasons:
            say(f"{self.name}: the model has collapsed: {'; '.join(reasons.values())}")
        arrays = {
            "completion_generated": outputs,
            "completion_rouge": rouge.tolist(),
            "completion_repetition": repetition.tolist(),
        }
        notes = {"collapse": "; ".join(reasons.values()) or None}
        if self.general_tasks:
            from unlearn.eval.lmeval import zero_shot_accuracy

            say(f"{self.name}: zero-shot accuracy on {', '.join(self.general_tasks)} (lm-evaluation-harness)")
            accuracy, notes["general_tasks"] = zero_shot_accuracy(
                model,
                tokenizer,
                list(self.general_tasks),
                self.general_tasks_path,
                self.general_tasks_limit,
                self.batch_size,
            )
            metrics.update(accuracy)
            self.directions.update({k: +1 for k in accuracy})
            if notes["general_tasks"]:
                say(f"{self.name}: {notes['general_tasks']}")
        return {"metrics": metrics, "arrays": arrays, "notes": notes}
