"""Seeded subsets of rows: benchmarks sample their training rows with it, evaluators their
questions (``max_questions``, ``max_probes``), so both draw the same subset for the same seed."""

from __future__ import annotations

from typing import Any, Mapping, Sequence, TypeVar

import numpy as np

R = TypeVar("R", bound=Mapping[str, Any])


def subsample(rows: Sequence[R], n: int | None, seed: int) -> list[R]:
    """A seeded random subset of at most ``n`` rows, in their original order."""
    if n is None or len(rows) <= n:
        return list(rows)
    keep = np.random.default_rng(seed).choice(len(rows), n, replace=False)
    return [rows[i] for i in sorted(keep)]
