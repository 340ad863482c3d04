"""What the phases ask of a benchmark's evaluator: one call with one context.

An evaluator is any object with ``evaluate(ctx: EvalContext) -> record`` and a
``reports_diverged`` flag (whether a run that diverged is still evaluated, e.g. the copyright
setting, which counts it as collapse). The record is ``{"metrics": {...}, ...}``. The job checks
at build time that ``benchmark.eval`` builds one (:func:`unlearn.job.build_job`), so a wrong
``_target_`` fails before any model is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

Record = dict[str, Any]


@dataclass(frozen=True)
class EvalContext:
    """One evaluation: the model, how prompts are written, the benchmark's splits, and the records
    relative metrics need (``oracle``: forget quality, PrivLeak; ``target``: WMDP's MMLU recovery;
    ``diverged``: the divergence guard's reason, or None)."""

    model: Any
    tokenizer: Any
    fmt: Any
    splits: Mapping[str, Sequence[Mapping[str, Any]]]
    oracle: Mapping[str, Any] | None = None
    target: Mapping[str, Any] | None = None
    diverged: str | None = None


@runtime_checkable
class Evaluator(Protocol):
    """A benchmark's metrics of one model. ``reports_diverged`` is read-only (a class attribute in
    the built-in evaluators): True when a diverged run is evaluated too, its weights being the last
    finite ones and ``ctx.diverged`` the reason; False skips its evaluation."""

    @property
    def reports_diverged(self) -> bool: ...

    def evaluate(self, ctx: EvalContext) -> Record: ...
