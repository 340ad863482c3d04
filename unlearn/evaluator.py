"""What the phases ask of a benchmark's evaluator: one call with one context.

An evaluator is any object with ``evaluate(ctx: EvalContext) -> record`` and a
``reports_diverged`` flag (whether a run that diverged is still evaluated, e.g. the copyright
setting, which counts it as collapse). The record is ``{"metrics": {...}, ...}``.

The evaluators under ``unlearn/eval`` and ``unlearn/benchmarks`` still take
``(model, tokenizer, fmt, splits, oracle=None[, target=None][, diverged=None])``;
:func:`as_evaluator` adapts them, reading once which of the optional arguments each takes. Once
they implement :class:`Evaluator`, the adapter and its signature reading go.
"""

from __future__ import annotations

import inspect
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
    reports_diverged: bool

    def evaluate(self, ctx: EvalContext) -> Record: ...


class SignatureEvaluator:
    """An evaluator of the older positional form, seen as an :class:`Evaluator` (its other
    attributes, e.g. ``directions`` or ``oracle_from_file``, pass through)."""

    OPTIONAL = ("target", "diverged")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        params = inspect.signature(inner.evaluate).parameters
        self.takes = tuple(k for k in self.OPTIONAL if k in params)
        self.reports_diverged = "diverged" in self.takes

    def evaluate(self, ctx: EvalContext) -> Record:
        extra = {k: getattr(ctx, k) for k in self.takes if getattr(ctx, k) is not None}
        return self.inner.evaluate(ctx.model, ctx.tokenizer, ctx.fmt, ctx.splits, oracle=ctx.oracle, **extra)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["inner"], name)


def as_evaluator(obj: Any) -> Evaluator:
    """``obj`` itself when it implements :class:`Evaluator`, else the adapter around it."""
    return obj if isinstance(obj, Evaluator) else SignatureEvaluator(obj)
