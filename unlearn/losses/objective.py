"""The two tasks of one unlearning step (spec §1): a forget-task loss and a retain-task loss.

The objective only composes loss components; weighting the two tasks is the combiner's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import Tensor, nn

from unlearn.smoothing.sga import NoSmoothing

LossFn = Callable[[nn.Module, Mapping[str, Any]], Tensor]


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

    @property
    def tasks(self) -> list[str]:
        return [t for t in ("retain", "forget") if getattr(self, t) is not None]

    def components(self) -> list[Any]:
        return [c for c in (self.forget, self.retain, self.smoothing) if c is not None]

    def prepare(self, ctx: Any) -> None:
        """Let components that need it (NPO's cached reference log-probs, RMU's hooks...) set up."""
        for c in self.components():
            if hasattr(c, "prepare"):
                c.prepare(ctx)

    def before_step(self, step: int, model: nn.Module, batch: Mapping[str, Any]) -> None:
        """Called once per optimizer step, before its first micro-batch (SGA's ``rate: auto``)."""
        hook = getattr(self.smoothing, "before_step", None)
        if hook is not None and self.forget is not None:
            hook(step, self.forget, model, batch)

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
