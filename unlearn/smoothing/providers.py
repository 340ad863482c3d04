"""Normal-data providers for SGA: which ``K−1`` normal samples accompany each forget sample.

A provider's ``select(forget rows, pool rows, k)`` returns :class:`NormalGroups`: the normal rows
and, for every forget row, ``k`` indices into them, plus ``info`` that the run records in its
results (e.g. which embedding backend retrieval used). It runs once, before training.
``random`` and ``retrieval`` draw from the benchmark's normal pool; ``file`` reads its own rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

Row = dict[str, Any]


@dataclass
class NormalGroups:
    """``rows`` = the normal samples; ``groups[i]`` = the ``k`` indices into ``rows`` of forget row ``i``."""

    rows: list[Row]
    groups: list[list[int]]
    info: dict[str, Any] = field(default_factory=dict)


def check_k(k: int, pool: Sequence[Row]) -> None:
    if k > len(pool):
        raise ValueError(
            f"smoothing needs K-1={k} normal samples per forget sample but the normal pool has {len(pool)} rows"
        )


@dataclass(frozen=True)
class RandomNormal:
    """``k`` distinct random pool samples per forget sample, fixed for the run by ``seed``."""

    seed: int = 0
    name: str = "random"

    def select(self, forget: Sequence[Row], pool: Sequence[Row], k: int) -> NormalGroups:
        check_k(k, pool)
        rng = np.random.default_rng(self.seed)
        groups = [rng.choice(len(pool), size=k, replace=False).tolist() for _ in forget]
        return NormalGroups(list(pool), groups, {"provider": self.name})


def _normal_row(entry: Any, rid: str, where: str) -> Row:
    if isinstance(entry, str) and entry.strip():
        return {"id": rid, "text": entry}
    if isinstance(entry, dict) and isinstance(entry.get("question"), str) and isinstance(entry.get("answer"), str):
        return {"id": rid, "question": entry["question"], "answer": entry["answer"]}
    raise ValueError(f"{where}: a normal sample must be a non-empty text or {{question, answer}}, got {entry!r}")


@dataclass(frozen=True)
class FileNormal:
    """Pre-generated normal samples (paraphrases, neighbours written by another LLM...) from JSONL.

    Each line: ``{"id": <forget row id>, "normal": [text | {"question": .., "answer": ..}, ...]}``.
    Every forget row needs a line with at least ``k`` samples (the first ``k`` are used); a missing
    id, too few samples or a malformed line is an error naming the file (and the line).
    """

    path: str
    name: str = "file"

    def read(self) -> dict[str, list[Any]]:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise ValueError(f"smoothing.provider.path: {path} does not exist (a JSONL file of {{id, normal}} lines)")
        out: dict[str, list[Any]] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("normal"), list):
                raise ValueError(
                    f"{path}:{n}: each line must be an object with 'id' and a 'normal' list, got {line[:120]!r}"
                )
            out[str(rec["id"])] = rec["normal"]
        return out

    def select(self, forget: Sequence[Row], pool: Sequence[Row], k: int) -> NormalGroups:
        table = self.read()
        ids = [str(r.get("id", "")) for r in forget]
        missing = [i for i in ids if i not in table]
        if missing:
            raise ValueError(f"{self.path}: no normal samples for {len(missing)} forget rows, e.g. {missing[:5]}")
        short = [(i, len(table[i])) for i in ids if len(table[i]) < k]
        if short:
            raise ValueError(
                f"{self.path}: smoothing needs K-1={k} normal samples per forget row; too few for {short[:5]} (id, "
                "count)"
            )
        rows: list[Row] = []
        groups = []
        for fid in ids:
            groups.append(list(range(len(rows), len(rows) + k)))
            rows.extend(
                _normal_row(e, f"{fid}/normal{j}", f"{self.path}, id {fid!r}") for j, e in enumerate(table[fid][:k])
            )
        return NormalGroups(rows, groups, {"provider": self.name, "provider_file": str(self.path)})
