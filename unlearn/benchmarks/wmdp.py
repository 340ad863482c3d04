"""WMDP (Li et al., 2024): unlearn hazardous biology or cybersecurity knowledge, keep general knowledge.

Data (``WMDPData``): forget and retain corpora from ``cais/wmdp-corpora`` (configs
``cyber-forget-corpus``, ``bio-retain-corpus``, ``cyber-retain-corpus``; split ``train``; field
``text``; the bio forget corpus is gated and is read from a local JSONL), chunked into training rows;
evaluation questions from ``cais/wmdp`` (configs ``wmdp-bio``/``wmdp-cyber``, split ``test``; fields
``question``, ``choices``, ``answer``); MMLU (``cais/mmlu``, ``all``) for utility.

Metrics (``WMDPEvaluator``): zero-shot 4-choice accuracy on the WMDP questions by the likelihood of
the answer letters (chance 0.25; lower is better), MMLU 5-shot accuracy, and recovery = MMLU after
unlearning / MMLU of the target model. The target is the base model itself; there is no oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from torch import nn

from unlearn.benchmarks.hub import DataUnavailable, Row, load_rows
from unlearn.benchmarks.mmlu import load_mc, load_mmlu, per_subject_accuracy
from unlearn.data.format import PromptFormat
from unlearn.eval.choice import MMLU_DESCRIPTION, MCTask, evaluate_task

#: hub configs and the subject named in the zero-shot description (lm-eval's wmdp tasks)
DOMAINS: dict[str, dict[str, str | None]] = {
    "bio": {"questions": "wmdp-bio", "forget": None, "retain": "bio-retain-corpus", "subject": "biology"},
    "cyber": {"questions": "wmdp-cyber", "forget": "cyber-forget-corpus", "retain": "cyber-retain-corpus", "subject": "cybersecurity"},
}


def chunk_words(text: str, words: int | None) -> list[str]:
    """``text`` cut into pieces of at most ``words`` whitespace-separated words (None: whole)."""
    if words is None:
        return [text]
    toks = text.split()
    return [" ".join(toks[i : i + words]) for i in range(0, len(toks), words)]


def subsample(rows: Sequence[Row], n: int | None, seed: int) -> list[Row]:
    """A seeded random subset of at most ``n`` rows, in their original order."""
    if n is None or len(rows) <= n:
        return list(rows)
    keep = np.random.default_rng(seed).choice(len(rows), n, replace=False)
    return [rows[i] for i in sorted(keep)]


def _positive_or_none(key: str, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"benchmark.data.{key} must be a positive integer or null, got {v!r}")


@dataclass(frozen=True)
class WMDPData:
    """Builds ``forget``/``retain`` text rows, ``wmdp`` questions and ``mmlu``/``mmlu_dev``.

    Each corpus document becomes rows of at most ``chunk_words`` words (null: one row per document,
    truncated to ``train.max_length`` tokens when encoded, as RMU does). ``max_*_docs`` sample
    documents before anything is materialised (the bio retain corpus is 1.9 GB); ``max_*_rows``
    sample the chunked rows. Documents shorter than ``min_chars`` are dropped.
    """

    domain: str = "bio"
    forget_path: str | None = None
    retain_path: str | None = None
    questions_path: str | None = None
    mmlu_path: str | None = None
    mmlu_dev_path: str | None = None
    corpora_hub_id: str | None = "cais/wmdp-corpora"
    questions_hub_id: str | None = "cais/wmdp"
    mmlu_hub_id: str | None = "cais/mmlu"
    mmlu_config: str = "all"
    chunk_words: int | None = 200
    min_chars: int = 50
    max_forget_docs: int | None = None
    max_retain_docs: int | None = None
    max_forget_rows: int | None = None
    max_retain_rows: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"benchmark.data.domain must be one of {sorted(DOMAINS)}, got {self.domain!r}")
        for key in ("chunk_words", "max_forget_docs", "max_retain_docs", "max_forget_rows", "max_retain_rows"):
            _positive_or_none(key, getattr(self, key))

    def _corpus(self, role: str, path: str | None, max_docs: int | None, max_rows: int | None) -> list[Row]:
        config = DOMAINS[self.domain][role]
        name = f"wmdp {self.domain} {role} corpus"
        if path is None and config is None:
            raise DataUnavailable(f"{name}: it is gated on the hub (request it from the WMDP authors); give the JSONL with benchmark.data.{role}_path=/path/{self.domain}-{role}-corpus.jsonl")
        docs = load_rows(name, self.corpora_hub_id, config=config, split="train", path=path, required=["text"], path_key=f"benchmark.data.{role}_path", max_rows=max_docs, seed=self.seed)
        rows = [
            {"id": f"{role}-{i}-{k}", "text": piece}
            for i, d in enumerate(docs)
            if len(str(d["text"])) >= self.min_chars
            for k, piece in enumerate(chunk_words(str(d["text"]), self.chunk_words))
        ]
        if not rows:
            raise DataUnavailable(f"{name}: no document has at least benchmark.data.min_chars={self.min_chars} characters")
        return subsample(rows, max_rows, self.seed)

    def build(self) -> dict[str, list[Row]]:
        d = DOMAINS[self.domain]
        questions = load_mc(f"wmdp-{self.domain}", self.questions_hub_id, d["questions"], "test", self.questions_path, "benchmark.data.questions_path")
        return {
            "forget": self._corpus("forget", self.forget_path, self.max_forget_docs, self.max_forget_rows),
            "retain": self._corpus("retain", self.retain_path, self.max_retain_docs, self.max_retain_rows),
            "wmdp": questions,
            **load_mmlu(self.mmlu_hub_id, self.mmlu_config, self.mmlu_path, self.mmlu_dev_path),
        }


# -- evaluation --------------------------------------------------------------------------------
def _builtin(model: nn.Module, tok: Any, tasks: Sequence[MCTask], batch_size: int, chat: PromptFormat | None) -> dict[str, dict[str, Any]]:
    return {t.name: evaluate_task(model, tok, t, batch_size, chat) for t in tasks}


def _lmeval(model: nn.Module, tok: Any, tasks: Sequence[MCTask], batch_size: int, chat: PromptFormat | None) -> dict[str, dict[str, Any]]:
    from unlearn.eval.lmeval import evaluate_tasks

    return evaluate_tasks(model, tok, tasks, batch_size)


#: how the multiple-choice tasks are run: the built-in letter scorer or lm-evaluation-harness
BACKENDS: dict[str, Callable[..., dict[str, dict[str, Any]]]] = {"builtin": _builtin, "lmeval": _lmeval}

DIRECTIONS = {"wmdp_acc": -1, "mmlu_acc": +1, "mmlu_recovery": +1}


@dataclass
class WMDPEvaluator:
    """WMDP accuracy (zero-shot), MMLU accuracy (``n_shot``-shot) and MMLU recovery.

    ``max_questions``/``max_utility_questions`` evaluate a seeded subset for quick runs. ``chat``
    wraps each prompt in the model's chat template (off by default: the WMDP paper and lm-eval
    score the plain prompt). ``backend=lmeval`` runs the same tasks through lm-evaluation-harness.
    """

    name: str = "wmdp_bio"
    subject: str = "biology"
    questions: str = "wmdp"
    utility: str | None = "mmlu"
    few_shot: str = "mmlu_dev"
    n_shot: int = 5
    max_questions: int | None = None
    max_utility_questions: int | None = None
    batch_size: int = 16
    chat: bool = False
    backend: str = "builtin"
    seed: int = 0
    directions: dict[str, int] = field(default_factory=lambda: dict(DIRECTIONS))

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"benchmark.eval.backend must be one of {sorted(BACKENDS)}, got {self.backend!r}")
        if self.backend == "lmeval" and self.chat:
            raise ValueError("benchmark.eval.chat=true is not supported with backend=lmeval (lm-eval formats chat prompts its own way)")
        if isinstance(self.n_shot, bool) or not isinstance(self.n_shot, int) or self.n_shot < 0:
            raise ValueError(f"benchmark.eval.n_shot must be an integer >= 0, got {self.n_shot!r}")
        for key in ("max_questions", "max_utility_questions", "batch_size"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"benchmark.eval.{key} must be a positive integer{' or null' if key != 'batch_size' else ''}, got {v!r}")

    def tasks(self, splits: Mapping[str, Sequence[Row]]) -> list[MCTask]:
        """The WMDP task (zero-shot) and, with ``utility``, the MMLU task (few-shot)."""
        for s in [self.questions] + ([self.utility, self.few_shot] if self.utility else []):
            if s not in splits:
                raise ValueError(f"benchmark {self.name!r} has no split {s!r} to evaluate (splits: {sorted(splits)})")
        out = [MCTask("wmdp", subsample(splits[self.questions], self.max_questions, self.seed), n_shot=0, description=MMLU_DESCRIPTION, default_subject=self.subject, row_subject=False)]
        if self.utility:
            # the question's own subject names the description, as lm-eval's mmlu_<subject> tasks do
            out.append(MCTask("mmlu", subsample(splits[self.utility], self.max_utility_questions, self.seed), n_shot=self.n_shot, dev=splits[self.few_shot]))
        return out

    def evaluate(self, model: nn.Module, tokenizer: Any, fmt: PromptFormat, splits: Mapping[str, Sequence[Row]], oracle: Mapping[str, Any] | None = None, target: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``{"metrics", "arrays"}``; pass the target model's record as ``target`` for recovery."""
        tasks = self.tasks(splits)
        res = BACKENDS[self.backend](model, tokenizer, tasks, self.batch_size, fmt if self.chat else None)
        metrics = {f"{t.name}_acc": res[t.name]["acc"] for t in tasks}
        arrays: dict[str, Any] = {f"{t.name}_correct": res[t.name]["correct"] for t in tasks}
        if self.utility:
            arrays["mmlu_subject_acc"] = per_subject_accuracy(tasks[1].rows, res["mmlu"]["correct"])
            before = (target or {}).get("metrics", {}).get("mmlu_acc")
            if before:
                metrics["mmlu_recovery"] = metrics["mmlu_acc"] / before
        return {"metrics": metrics, "arrays": arrays}
