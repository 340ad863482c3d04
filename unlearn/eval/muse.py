"""MUSE's evaluation (Shi et al., 2024), computed as its reference code does.

- **VerbMem** on D_f: greedy continuation (at most 128 new tokens) of each ``verbmem`` prompt,
  ROUGE-L F-measure (no stemmer: MUSE's ``mean_rougeL``) against the true continuation cut as
  MUSE cuts it: its first 128 tokens tokenised *with* BOS (BOS + 127 text tokens). Lower is better.
- **KnowMem** on D_f (lower is better) and D_r (higher is better): each question after MUSE's
  in-context examples (``Question: q\\nAnswer: a\\n\\n`` …), at most 32 new tokens, cut at
  ``\\n\\n``/``Question``, ROUGE-L F-measure against the answer.
- **PrivLeak** = ``(AUC − AUC_retrained) / AUC_retrained × 100``. The AUC is MUSE's
  ``forget_holdout_Min-40%``: the Min-K% Prob attack (k = 40%) with the *holdout* texts as the
  positive class and the forget texts as the negative one. A model that still knows D_f gets
  AUC ≈ 0 and PrivLeak ≈ −100 (MUSE's target: −99.8 on News); close to 0 is best, positive is
  over-unlearning. AUC_retrained comes from the oracle's evaluation record, else from
  ``retrain_auc`` (MUSE's published value for its retrained model).

All three are reported in [0, 1] (VerbMem, KnowMem; MUSE's tables show them × 100) and in percent
(PrivLeak), under ``verbmem_f``, ``knowmem_f``, ``knowmem_r``, ``privleak``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from torch import nn

from unlearn.eval import metrics as M
from unlearn.eval.generate import first_tokens, greedy, prompt_budget
from unlearn.eval.mia import min_k_score
from unlearn.eval.scoring import context_length, score_texts
from unlearn.evaluator import EvalContext
from unlearn.utils.progress import Steps

Row = Mapping[str, Any]
KNOWMEM_STOP = ("\n\n", "\nQuestion", "Question:")

DIRECTIONS = {
    "verbmem_f": -1,
    "knowmem_f": -1,
    "knowmem_r": +1,
    "privleak": 0,
    "privleak_auc": 0,
    "privleak_reference_auc": 0,
}


def icl_prefix(examples: Sequence[Row]) -> str:
    """MUSE's few-shot prefix for KnowMem."""
    return "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in examples)


privleak = M.privleak  # MUSE's definition, shared with the QA benchmarks


@dataclass
class MUSEEvaluator:
    """Evaluates a model on a MUSE corpus's ``verbmem``, ``knowmem`` and ``privleak`` parts (names of
    splits in the benchmark's data; see the module docstring for the metrics)."""

    reports_diverged: ClassVar[bool] = False  # a diverged run is not evaluated
    name: str = "muse_news"
    verbmem: str = "verbmem"
    forget_qa: str = "forget_qa"
    retain_qa: str = "retain_qa"
    forget_qa_icl: str | None = "forget_qa_icl"
    retain_qa_icl: str | None = "retain_qa_icl"
    privleak_forget: str = "privleak_forget"
    privleak_holdout: str = "privleak_holdout"
    verbmem_max_new_tokens: int = 128
    knowmem_max_new_tokens: int = 32
    max_prompt_tokens: int | None = None
    max_length: int = 2048
    min_k: float = 0.4
    retrain_auc: float | None = None
    max_rows: int | None = None
    batch_size: int = 8
    directions: dict[str, int] = field(default_factory=lambda: dict(DIRECTIONS))

    def __post_init__(self) -> None:
        if not 0 < self.min_k <= 1:
            raise ValueError(f"benchmark.eval.min_k must be in (0, 1], got {self.min_k!r}")
        if self.retrain_auc is not None and not 0 < self.retrain_auc <= 1:
            raise ValueError(f"benchmark.eval.retrain_auc must be in (0, 1] or null, got {self.retrain_auc!r}")

    def _rows(self, splits: Mapping[str, Sequence[Row]], name: str | None) -> list[Row]:
        if name is None:
            return []
        if name not in splits:
            raise ValueError(f"benchmark {self.name!r} has no split {name!r} to evaluate (splits: {sorted(splits)})")
        rows = list(splits[name])
        return rows if self.max_rows is None else rows[: self.max_rows]

    def verbmem_scores(self, model: nn.Module, tok: Any, rows: Sequence[Row]) -> tuple[np.ndarray, list[str]]:
        """ROUGE-L of the greedy continuation of each prompt against its (cut) true continuation."""
        n = self.verbmem_max_new_tokens
        budget = prompt_budget(model, n, self.max_prompt_tokens)
        outputs = greedy(model, tok, [r["prompt"] for r in rows], n, self.batch_size, max_prompt_tokens=budget)
        refs = [
            first_tokens(tok, r["gt"], n, add_special_tokens=True)  # MUSE: BOS + n − 1 tokens
            for r in rows
        ]
        return M.rouge_l(outputs, refs), outputs

    def knowmem_scores(
        self, model: nn.Module, tok: Any, rows: Sequence[Row], icl: Sequence[Row]
    ) -> tuple[np.ndarray, list[str]]:
        """ROUGE-L of the few-shot greedy answer to each question against the answer."""
        n = self.knowmem_max_new_tokens
        prefix = icl_prefix(icl)
        prompts = [f"{prefix}Question: {r['question']}\nAnswer: " for r in rows]
        outputs = greedy(
            model,
            tok,
            prompts,
            n,
            self.batch_size,
            KNOWMEM_STOP,
            max_prompt_tokens=prompt_budget(model, n, self.max_prompt_tokens),
        )
        return M.rouge_l(outputs, [r["answer"] for r in rows]), outputs

    def mink_scores(self, model: nn.Module, tok: Any, rows: Sequence[Row]) -> np.ndarray:
        """Min-K% Prob of each text (mean log-prob of its k% least likely tokens; higher = member)."""
        ctx = context_length(model)
        max_len = min(self.max_length, ctx) if ctx else self.max_length
        s = score_texts(model, tok, [r["text"] for r in rows], max_len, self.batch_size)
        return np.array([min_k_score(t, self.min_k) for t in s.token_nll])

    def reference_auc(self, oracle: Mapping[str, Any] | None) -> float | None:
        if oracle is not None and "privleak_auc" in oracle.get("metrics", {}):
            return float(oracle["metrics"]["privleak_auc"])
        return self.retrain_auc

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        """Returns ``{"metrics", "arrays"}``; PrivLeak needs the oracle's record (``ctx.oracle``) or
        ``retrain_auc``. ``ctx.fmt`` is unused: MUSE prompts its (base) models with raw text."""
        model, tokenizer, splits = ctx.model, ctx.tokenizer, ctx.splits
        verb, fqa, rqa = (self._rows(splits, k) for k in (self.verbmem, self.forget_qa, self.retain_qa))
        ficl, ricl = self._rows(splits, self.forget_qa_icl), self._rows(splits, self.retain_qa_icl)
        pf, ph = self._rows(splits, self.privleak_forget), self._rows(splits, self.privleak_holdout)
        with Steps(f"eval {self.name}", total=4) as steps:
            v, v_out = self.verbmem_scores(model, tokenizer, verb)
            steps.advance("verbmem")
            kf, kf_out = self.knowmem_scores(model, tokenizer, fqa, ficl)
            steps.advance("knowmem forget")
            kr, kr_out = self.knowmem_scores(model, tokenizer, rqa, ricl)
            steps.advance("knowmem retain")
            forget_mink, holdout_mink = self.mink_scores(model, tokenizer, pf), self.mink_scores(model, tokenizer, ph)
            steps.advance("privleak")
        auc = M.auc(holdout_mink, forget_mink)  # MUSE: holdout is the positive class
        metrics = {
            "verbmem_f": float(np.mean(v)),
            "knowmem_f": float(np.mean(kf)),
            "knowmem_r": float(np.mean(kr)),
            "privleak_auc": auc,
        }
        ref = self.reference_auc(ctx.oracle)
        if ref is not None:
            metrics["privleak"] = privleak(auc, ref)
            metrics["privleak_reference_auc"] = ref
        arrays = {
            "verbmem_rouge": v.tolist(),
            "verbmem_generated": v_out,
            "knowmem_f_generated": kf_out,
            "knowmem_r_generated": kr_out,
            "privleak_forget_mink": forget_mink.tolist(),
            "privleak_holdout_mink": holdout_mink.tolist(),
        }
        return {"metrics": metrics, "arrays": arrays}

    def oracle_from_file(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """An oracle evaluation from ``benchmark.oracle.eval_file``: this evaluator's record
        (``metrics.privleak_auc``) or MUSE's own ``privleak/auc.json`` of a retrained model."""
        if not isinstance(record, Mapping):
            raise ValueError("is not a JSON object")
        if "privleak_auc" in record.get("metrics", {}):
            return dict(record)
        key = f"forget_holdout_Min-{round(self.min_k * 100)}%"
        if key in record:
            return {"metrics": {"privleak_auc": float(record[key])}, "arrays": {}}
        raise ValueError(f"has neither metrics.privleak_auc (an eval_oracle.json of this framework) nor MUSE's {key!r}")
