"""MUSE (Shi et al., 2024, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models"):
news articles (``muse-bench/MUSE-News``) or Harry Potter books (``muse-bench/MUSE-Books``).

Hub configs and splits used here: ``raw`` (``forget``, ``retain1``, ``retain2``: training text),
``verbmem`` (``forget``: ``prompt`` + true continuation ``gt``), ``knowmem`` (``forget_qa``,
``retain_qa`` and their in-context examples ``*_icl``: ``question``/``answer``), ``privleak``
(``forget``, ``holdout``: ``text``). A ``local_dir`` is MUSE's own ``data/<corpus>/`` layout
(``raw/forget.json``, ``knowmem/forget_qa.json``, ...), as its ``load_data.py`` writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from unlearn.benchmarks.sources import Part, check_paths, chunk_rows, read_part
from unlearn.rules import is_int

Row = dict[str, Any]
TEXT = ("text",)
QA = ("question", "answer")

#: training text, cut into passages of ``chunk_words`` words
RAW = ("forget", "retain1", "retain2")

MUSE_PARTS = [
    *(Part(k, "raw", k, f"raw/{k}", TEXT) for k in RAW),
    Part("verbmem", "verbmem", "forget", "verbmem/forget", ("prompt", "gt")),
    *(Part(k, "knowmem", k, f"knowmem/{k}", QA) for k in ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")),
    Part("privleak_forget", "privleak", "forget", "privleak/forget", TEXT),
    Part("privleak_holdout", "privleak", "holdout", "privleak/holdout", TEXT),
]


@dataclass(frozen=True)
class MuseData:
    """Loads one MUSE corpus; ``build()`` returns ``{part: rows}`` for the parts above, with the
    ``raw`` training texts as passages of at most ``chunk_words`` words (MUSE trains on fixed-length
    chunks of the concatenated corpus; word chunks keep this independent of the tokenizer)."""

    hub_id: str | None = "muse-bench/MUSE-News"
    name: str = "muse_news"
    local_dir: str | None = None
    paths: Mapping[str, Any] = field(default_factory=dict)
    chunk_words: int = 150

    def __post_init__(self) -> None:
        check_paths(self.paths, MUSE_PARTS, self.name)
        if not is_int(self.chunk_words) or self.chunk_words < 1:
            raise ValueError(f"benchmark.data.chunk_words must be an integer >= 1, got {self.chunk_words!r}")

    def build(self) -> dict[str, list[Row]]:
        paths = check_paths(self.paths, MUSE_PARTS, self.name)
        splits = {p.key: read_part(self.name, self.hub_id, p, paths, self.local_dir) for p in MUSE_PARTS}
        for k in RAW:
            splits[k] = chunk_rows(splits[k], self.chunk_words, k)
        return splits
