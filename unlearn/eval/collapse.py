"""One collapse check for every benchmark: did unlearning destroy the model rather than the data?

A gradient-ascent run can drive model utility to 0 with finite losses; the divergence guard does
not see it and the run would end ``ok``. :class:`CollapseCheck` looks at an evaluation record
(``{"metrics", "arrays", "notes"}``) after the evaluator made it and flags collapse, by name:

- ``nonfinite``: a metric is NaN or infinite;
- ``utility``: the benchmark's utility metric fell below ``floor + min_fraction × (target − floor)``
  (``floor``: what a model that knows nothing scores, e.g. 0.25 on 4-choice MMLU), i.e. it kept
  less than ``min_fraction`` of the target model's margin over the floor (no check when the target
  has no margin: a model at chance cannot lose what it never had);
- ``repetition``: the generations under ``generated`` (array keys) degenerate into loops (mean
  repeated-3-gram fraction above ``max_repetition``).

It writes ``collapsed`` (1/0) and ``collapsed_<reason>`` into the metrics and the reasons in words
into ``notes.collapse``; the pipeline then ends the run with ``status: collapsed``. An evaluator that
already reports collapse itself (the copyright setting: ``collapsed`` from perplexity) is left as it
is, and so counts the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from unlearn.eval.metrics import repeated_ngram_fraction

REASONS = ("nonfinite", "utility", "repetition")


@dataclass(frozen=True)
class CollapseCheck:
    """``utility``: the metric key whose fall means collapse (``None``: only the other signs);
    ``higher_is_better`` its direction; see the module docstring for the rest."""

    utility: str | None = None
    higher_is_better: bool = True
    floor: float = 0.0
    min_fraction: float = 0.1
    generated: Sequence[str] = ()
    max_repetition: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.min_fraction < 1:
            raise ValueError(f"benchmark.collapse.min_fraction must be in [0, 1), got {self.min_fraction!r}")
        if not 0 <= self.max_repetition <= 1:
            raise ValueError(f"benchmark.collapse.max_repetition must be in [0, 1], got {self.max_repetition!r}")
        if not math.isfinite(self.floor):
            raise ValueError(f"benchmark.collapse.floor must be a finite number, got {self.floor!r}")

    def limit(self, target: Mapping[str, Any] | None) -> float | None:
        """The utility value beyond which the model counts as collapsed (``None``: no target value,
        or a target that is itself no better than ``floor``, e.g. at chance on multiple choice: there
        is no margin to lose, and a limit above the target would call the unchanged model collapsed)."""
        base = (target or {}).get("metrics", {}).get(self.utility) if self.utility else None
        if base is None or not math.isfinite(base):
            return None
        if (float(base) <= self.floor) if self.higher_is_better else (float(base) >= self.floor):
            return None
        return self.floor + self.min_fraction * (float(base) - self.floor)

    def reasons(self, record: Mapping[str, Any], target: Mapping[str, Any] | None = None) -> dict[str, str]:
        """Why the evaluated model counts as collapsed (empty: it does not)."""
        metrics, arrays = record.get("metrics", {}), record.get("arrays", {})
        out: dict[str, str] = {}
        bad = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not math.isfinite(v))
        if bad:
            out["nonfinite"] = f"non-finite {', '.join(bad)}"
        limit = self.limit(target)
        value = metrics.get(self.utility) if self.utility else None
        if limit is not None and value is not None and math.isfinite(value):
            worse = value < limit if self.higher_is_better else value > limit
            if worse:
                base = target["metrics"][self.utility]  # type: ignore[index]
                out["utility"] = (
                    f"{self.utility} {value:.4g} kept under {self.min_fraction:g} of the target's {base:.4g} "
                    f"(limit {limit:.4g})"
                )
        texts = [t for k in self.generated for t in arrays.get(k, [])]
        if texts:
            rep = float(np.mean([repeated_ngram_fraction(t) for t in texts]))
            if rep > self.max_repetition:
                out["repetition"] = (
                    f"degenerate generations: {rep:.2f} of generated 3-grams repeat (> {self.max_repetition:g})"
                )
        return out

    def apply(self, record: dict[str, Any], target: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``record`` with the collapse metrics and note added (unchanged if the evaluator did it)."""
        if "collapsed" in record.get("metrics", {}):
            return record
        reasons = self.reasons(record, target)
        metrics = {
            **record["metrics"],
            "collapsed": float(bool(reasons)),
            **{f"collapsed_{r}": float(r in reasons) for r in REASONS},
        }
        notes = {**record.get("notes", {}), "collapse": "; ".join(reasons.values()) or None}
        return {**record, "metrics": metrics, "notes": notes}


def collapse_reason(record: Mapping[str, Any]) -> str | None:
    """The collapse note of an evaluation record, or ``None`` when it did not collapse."""
    if not record.get("metrics", {}).get("collapsed"):
        return None
    return (record.get("notes") or {}).get("collapse") or "collapsed"
