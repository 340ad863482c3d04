"""The two tasks of one unlearning step (docs/methods.md §1): a forget-task loss and a retain-task loss.

The objective only composes loss components; weighting the two tasks is the combiner's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, cast

from torch import Tensor, nn

from unlearn.hooks import Component, LossFn, as_component
from unlearn.smoothing.sga import NoSmoothing


@dataclass
class Objective:
    """``forget`` and ``retain`` are per-sample loss components (or ``None`` for no such task).

    The forget task is the smoothing-weighted reduction of the forget component over the forget
    samples and, when smoothing is on, their normal samples; the retain task is the mean of the
    retain component over the retain batch.
    """

    forget: LossFn | None
    retain: LossFn | None
    smoothing: Any = field(default_factory=NoSmoothing)

    def __post_init__(self) -> None:
        if self.forget is None and self.retain is None:
            raise ValueError("forget and retain are both 'none': there is nothing to train")
        # plain callables get the hooks here, once, so nothing below probes for them
        self.forget = as_component(self.forget)
        self.retain = as_component(self.retain)
        self.smoothing = as_component(self.smoothing)

    @property
    def tasks(self) -> list[str]:
        return [t for t in ("retain", "forget") if getattr(self, t) is not None]

    def components(self) -> list[Component]:
        # __post_init__ made each a Component (or None); the field types say what the constructor takes
        found = cast("tuple[Component | None, ...]", (self.forget, self.retain, self.smoothing))
        return [c for c in found if c is not None]

    def prepare(self, ctx: Any) -> None:
        """Let components set up (NPO's cached reference log-probs, RMU's hooks...)."""
        for c in self.components():
            c.prepare(ctx)

    def before_step(self, step: int, model: nn.Module, batch: Mapping[str, Any]) -> None:
        """Called once per optimizer step, before its first micro-batch (SGA's ``rate: auto``)."""
        for c in self.components():
            c.before_step(step, self.forget, model, batch)

    def loss(self, task: str, model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
        if task == "forget":
            return self.forget_loss(model, batch)
        if task == "retain":
            return self.retain_loss(model, batch)
        raise ValueError(f"unknown task {task!r}")

    def forget_loss(self, model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
        assert self.forget is not None
        per_forget = self.forget(model, batch["forget"])
        per_normal = None
        if self.smoothing.active and "normal" in batch:
            per_normal = self.forget(model, batch["normal"])
        return self.smoothing.reduce(per_forget, per_normal)

    def retain_loss(self, model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
        assert self.retain is not None
        return self.retain(model, batch["retain"]).mean()
