"""Plain next-token NLL: the default retain loss, and the fine-tuning loss."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from unlearn.hooks import Component
from unlearn.losses.common import Batch, mean_nll


@dataclass(frozen=True)
class NLL(Component):
    """Retain loss ``ℓ(x_r)`` per sample (docs/methods.md §4)."""

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        return mean_nll(model, batch)


def no_loss() -> None:
    """The ``none`` option of a loss group: no task at all (e.g. pure GA without a retain term)."""
    return None
