"""The parts of a public benchmark and where each is read from.

A benchmark's data is a handful of tables ("parts"): each lives on the hub under a config and a
split, and may instead come from a local file. Three places, first found wins:

1. ``benchmark.data.paths.<part>``: one file (or ``datasets`` folder) for that part;
2. ``benchmark.data.local_dir``: a folder laid out like the hub (``<local>.jsonl`` or ``.json``,
   e.g. TOFU's ``forget10.json`` or MUSE's ``raw/forget.json``);
3. the hub, through :func:`unlearn.benchmarks.hub.load_rows` (fast, clear failure offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from unlearn.benchmarks.hub import DataUnavailable, load_rows

Row = dict[str, Any]
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt")


@dataclass(frozen=True)
class Part:
    """One table of a benchmark: its key (split name here and under ``benchmark.data.paths``), its
    hub config and split, its file stem under ``local_dir``, and the fields every row must have."""

    key: str
    config: str | None
    split: str
    local: str
    required: tuple[str, ...]


def find_local(local_dir: str | None, stem: str) -> Path | None:
    """``<local_dir>/<stem>`` with a known suffix, or a ``datasets`` folder of that name."""
    if not local_dir:
        return None
    base = Path(local_dir).expanduser()
    if not base.is_dir():
        raise DataUnavailable(f"benchmark.data.local_dir={local_dir} is not a folder")
    for suffix in SUFFIXES:
        if (base / f"{stem}{suffix}").is_file():
            return base / f"{stem}{suffix}"
    return base / stem if (base / stem).is_dir() else None


def check_paths(paths: Mapping[str, Any] | None, parts: Sequence[Part], dataset: str) -> dict[str, Any]:
    """The ``paths`` overrides as a dict; an unknown key is an error that lists the known ones."""
    out = dict(paths or {})
    known = [p.key for p in parts]
    for k in out:
        if k not in known:
            raise ValueError(f"benchmark.data.paths.{k}: {dataset} has no part {k!r} (parts: {known})")
    return out


def read_part(
    dataset: str, hub_id: str | None, part: Part, paths: Mapping[str, Any], local_dir: str | None
) -> list[Row]:
    """Rows of one part (see the module docstring for where from), schema-checked, each with an
    ``id`` (kept when the data has one, else ``<part>-<index>``)."""
    explicit = paths.get(part.key)
    path = explicit or find_local(local_dir, part.local)
    try:
        rows = load_rows(
            f"{dataset} {part.key}",
            hub_id,
            config=part.config,
            split=part.split,
            path=str(path) if path else None,
            required=part.required,
            path_key=f"benchmark.data.paths.{part.key}",
        )
    except DataUnavailable as e:
        if explicit:
            raise
        raise DataUnavailable(
            f"{e} (or put {part.local}.jsonl into a folder given as benchmark.data.local_dir)"
        ) from None
    return [{**r, "id": str(r.get("id", f"{part.key}-{i}"))} for i, r in enumerate(rows)]


def words_of(rows: Iterable[Mapping[str, Any]], field: str = "text") -> list[list[str]]:
    """Each row's text split into words (whitespace), empty rows dropped."""
    return [w for w in (str(r[field]).split() for r in rows) if w]


def chunk_rows(rows: Sequence[Mapping[str, Any]], words: int, key: str, max_rows: int | None = None) -> list[Row]:
    """Text rows cut into consecutive passages of at most ``words`` words (within each row), as
    ``{"id", "text"}`` rows: long articles and books become trainable rows of bounded length."""
    if words < 1:
        raise ValueError(f"benchmark.data.chunk_words must be an integer >= 1, got {words!r}")
    out: list[Row] = []
    for i, ws in enumerate(words_of(rows)):
        for j in range(0, len(ws), words):
            out.append({"id": f"{key}-{i}-{j // words}", "text": " ".join(ws[j : j + words])})
            if max_rows is not None and len(out) >= max_rows:
                return out
    return out
