"""WMDP (Li et al., 2024): unlearn hazardous biology or cybersecurity knowledge, keep general knowledge.

Data (``WMDPData``): forget and retain corpora from ``cais/wmdp-corpora`` (configs
``cyber-forget-corpus``, ``bio-retain-corpus``, ``cyber-retain-corpus``; split ``train``; field
``text``; the bio forget corpus is gated and is read from a local JSONL), chunked into training rows;
evaluation questions from ``cais/wmdp`` (configs ``wmdp-bio``/``wmdp-cyber``, split ``test``; fields
``question``, ``choices``, ``answer``); MMLU (``cais/mmlu``, ``all``) for utility.

Metrics: :class:`unlearn.eval.wmdp.WMDPEvaluator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unlearn.benchmarks.hub import DataUnavailable, Row, load_rows
from unlearn.benchmarks.mmlu import load_mc, load_mmlu
from unlearn.data.subsample import subsample
from unlearn.rules import is_int

#: hub configs and the subject named in the zero-shot description (lm-eval's wmdp tasks)
DOMAINS: dict[str, dict[str, str | None]] = {
    "bio": {"questions": "wmdp-bio", "forget": None, "retain": "bio-retain-corpus", "subject": "biology"},
    "cyber": {
        "questions": "wmdp-cyber",
        "forget": "cyber-forget-corpus",
        "retain": "cyber-retain-corpus",
        "subject": "cybersecurity",
    },
}


def chunk_words(text: str, words: int | None) -> list[str]:
    """``text`` cut into pieces of at most ``words`` whitespace-separated words (None: whole)."""
    if words is None:
        return [text]
    toks = text.split()
    return [" ".join(toks[i : i + words]) for i in range(0, len(toks), words)]


def _positive_or_none(key: str, v: Any) -> None:
    if v is not None and (not is_int(v) or v < 1):
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
            raise DataUnavailable(
                f"{name}: it is gated on the hub (request it from the WMDP authors); give the JSONL with "
                f"benchmark.data.{role}_path=/path/{self.domain}-{role}-corpus.jsonl"
            )
        docs = load_rows(
            name,
            self.corpora_hub_id,
            config=config,
            split="train",
            path=path,
            required=["text"],
            path_key=f"benchmark.data.{role}_path",
            max_rows=max_docs,
            seed=self.seed,
        )
        rows = [
            {"id": f"{role}-{i}-{k}", "text": piece}
            for i, d in enumerate(docs)
            if len(str(d["text"])) >= self.min_chars
            for k, piece in enumerate(chunk_words(str(d["text"]), self.chunk_words))
        ]
        if not rows:
            raise DataUnavailable(
                f"{name}: no document has at least benchmark.data.min_chars={self.min_chars} characters"
            )
        return subsample(rows, max_rows, self.seed)

    def build(self) -> dict[str, list[Row]]:
        d = DOMAINS[self.domain]
        questions = load_mc(
            f"wmdp-{self.domain}",
            self.questions_hub_id,
            d["questions"],
            "test",
            self.questions_path,
            "benchmark.data.questions_path",
        )
        return {
            "forget": self._corpus("forget", self.forget_path, self.max_forget_docs, self.max_forget_rows),
            "retain": self._corpus("retain", self.retain_path, self.max_retain_docs, self.max_retain_rows),
            "wmdp": questions,
            **load_mmlu(self.mmlu_hub_id, self.mmlu_config, self.mmlu_path, self.mmlu_dev_path),
        }
