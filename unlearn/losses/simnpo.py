"""SimNPO (Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for
LLM Unlearning"): NPO without a reference model, on length-normalised log-probabilities."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.hooks import Component
from unlearn.losses.common import Batch, require_number, sequence_nll


def simnpo_loss(mean_nll: Tensor, beta: float, delta: float) -> Tensor:
    """``−(2/β)·log σ(β·(ℓ_sum/|y| − δ))`` per sample, from the mean token NLL ``ℓ_sum/|y|`` ``[B]``."""
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta))


class SimNPO(Component):
    """Forget loss of SimNPO per sample (docs/methods.md §3): β > 0 (default 2.5), margin δ (default 0).

    The loss falls as the forget NLL rises and flattens once ``ℓ`` is well above ``δ``, so unlike
    GA it stops pushing samples that are already forgotten.
    """

    def __init__(self, beta: float = 2.5, delta: float = 0.0) -> None:
        self.beta = require_number(beta, "forget.beta", 0.0)
        self.delta = require_number(delta, "forget.delta")

    def __repr__(self) -> str:
        return f"SimNPO(beta={self.beta}, delta={self.delta})"

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        total, count = sequence_nll(model, batch)
        return simnpo_loss(total / count.clamp_min(1), self.beta, self.delta)
