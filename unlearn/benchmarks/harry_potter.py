"""The copyright setting (Eldan & Russinovich, 2023, "Who's Harry Potter?"; Yao et al., 2023,
"Large Language Model Unlearning"): forget the text of a book, keep general language ability.

The book is copyrighted, so nothing of it ships here: the forget text is a local file
(``benchmark.data.paths.forget``: ``.txt``, or ``.jsonl``/``.json`` rows with ``text``) or, online,
the forget split of MUSE-Books (``muse-bench/MUSE-Books``, config ``raw``, which is the Harry Potter
corpus). Completion prompts are a local file of ``prompt`` + ``continuation`` rows (``gt`` is
accepted for the continuation, as in MUSE's ``verbmem``), or ``n_prompts`` (200) windows cut
evenly from the forget text. General text (retain loss and perplexity) is WikiText
(``Salesforce/wikitext``, ``wikitext-2-raw-v1``: ``train`` to retain, ``test`` for perplexity) or
local files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from unlearn.benchmarks.hub import DataUnavailable
from unlearn.benchmarks.sources import Part, check_paths, chunk_rows, find_local, read_part, words_of
from unlearn.rules import is_int

Row = dict[str, Any]
TEXT = ("text",)


def joined(rows: list[Row]) -> list[Row]:
    """All rows' text as one row: a book or WikiText comes as lines and headings, not passages."""
    return [{"text": " ".join(" ".join(w) for w in words_of(rows))}]


def book_prompts(rows: list[Row], n: int, prompt_words: int, continuation_words: int) -> list[Row]:
    """Up to ``n`` non-overlapping windows spread evenly over the text: the first ``prompt_words``
    words are the prompt, the next ``continuation_words`` the true continuation."""
    words = [w for ws in words_of(rows) for w in ws]
    window = prompt_words + continuation_words
    k = min(n, len(words) // window)
    if k < 1:
        raise DataUnavailable(
            f"harry_potter forget: {len(words)} words cannot hold one prompt of {prompt_words} + "
            f"{continuation_words} words (benchmark.data.prompt_words, continuation_words)"
        )
    step = len(words) // k
    out = []
    for i in range(k):
        s = i * step
        out.append(
            {
                "id": f"prompt-{i}",
                "prompt": " ".join(words[s : s + prompt_words]),
                "continuation": " ".join(words[s + prompt_words : s + window]),
            }
        )
    return out


@dataclass(frozen=True)
class HarryPotterData:
    """Builds ``{"forget", "retain", "prompts", "general"}``: forget and retain as passages of at
    most ``chunk_words`` words, ``prompts`` as ``prompt``/``continuation`` rows, ``general`` as
    passages for perplexity."""

    forget_hub_id: str | None = "muse-bench/MUSE-Books"
    general_hub_id: str | None = "Salesforce/wikitext"
    general_config: str = "wikitext-2-raw-v1"
    local_dir: str | None = None
    paths: Mapping[str, Any] = field(default_factory=dict)
    chunk_words: int = 150
    n_prompts: int = 200
    prompt_words: int = 50
    continuation_words: int = 100
    max_retain_rows: int | None = 2000
    max_general_rows: int | None = 200

    def parts(self) -> list[Part]:
        return [
            Part("forget", "raw", "forget", "forget", TEXT),
            Part("prompts", None, "train", "prompts", ("prompt",)),
            Part("retain", self.general_config, "train", "retain", TEXT),
            Part("general", self.general_config, "test", "general", TEXT),
        ]

    def __post_init__(self) -> None:
        check_paths(self.paths, self.parts(), "harry_potter")
        for key in ("chunk_words", "n_prompts", "prompt_words", "continuation_words"):
            v = getattr(self, key)
            if not is_int(v) or v < 1:
                raise ValueError(f"benchmark.data.{key} must be an integer >= 1, got {v!r}")

    def _prompts(self, paths: Mapping[str, Any], part: Part, forget_text: list[Row]) -> list[Row]:
        if not (paths.get("prompts") or find_local(self.local_dir, part.local)):
            return book_prompts(forget_text, self.n_prompts, self.prompt_words, self.continuation_words)
        rows = read_part("harry_potter", None, part, paths, self.local_dir)
        out = []
        for i, r in enumerate(rows[: self.n_prompts]):
            cont = r.get("continuation", r.get("gt"))
            if not isinstance(cont, str):
                raise DataUnavailable(
                    f"harry_potter prompts: row {i} has no field 'continuation' (or 'gt') (fields: {sorted(r)})"
                )
            out.append({"id": r["id"], "prompt": r["prompt"], "continuation": cont})
        return out

    def build(self) -> dict[str, list[Row]]:
        paths = check_paths(self.paths, self.parts(), "harry_potter")
        forget, prompts, retain, general = self.parts()
        book = joined(read_part("harry_potter", self.forget_hub_id, forget, paths, self.local_dir))
        return {
            "forget": chunk_rows(book, self.chunk_words, "forget"),
            "retain": chunk_rows(
                joined(read_part("harry_potter", self.general_hub_id, retain, paths, self.local_dir)),
                self.chunk_words,
                "retain",
                self.max_retain_rows,
            ),
            "prompts": self._prompts(paths, prompts, book),
            "general": chunk_rows(
                joined(read_part("harry_potter", self.general_hub_id, general, paths, self.local_dir)),
                self.chunk_words,
                "general",
                self.max_general_rows,
            ),
        }
