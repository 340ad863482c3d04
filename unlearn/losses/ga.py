"""Gradient ascent on the forget set."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from unlearn.hooks import Component
from unlearn.losses.common import Batch, mean_nll


@dataclass(frozen=True)
class GA(Component):
    """Forget loss ``−ℓ(x_f)`` per sample (docs/methods.md §3): minimising it raises the forget NLL."""

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        return -mean_nll(model, batch)
