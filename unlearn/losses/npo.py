"""Negative Preference Optimization (Zhang et al. 2024, "Negative Preference Optimization: From
Catastrophic Collapse to Effective Unlearning")."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.hooks import Component
from unlearn.losses.common import Batch, ids_of, require_number, sequence_nll, token_nll

#: the roles whose rows an NPO forget loss is applied to (normal rows when SGA smoothing is on)
ROLES = ("forget", "normal")


def npo_loss(logp: Tensor, ref_logp: Tensor, beta: float) -> Tensor:
    """``−(2/β)·log σ(−β·(log π_θ − log π_ref))`` per sample; inputs are sequence log-probs ``[B]``."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp))


class NPO(Component):
    """Forget loss of NPO, per sample, on sequence-summed answer log-probabilities.

    ``log π_ref(y|x)`` is computed once in :meth:`prepare` for every forget and normal row and
    cached by row id (a float per row), so no reference model stays in memory: before training
    the live model *is* the reference; under LoRA it is the base with the adapter disabled.
    At ``π_θ = π_ref`` the loss is ``(2/β)·log 2`` and its gradient equals GA's on the summed NLL.
    """

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = require_number(beta, "forget.beta", 0.0)
        self._ref: dict[str, tuple[float, int]] = {}

    def __repr__(self) -> str:
        return f"NPO(beta={self.beta})"

    def loss_at_reference(self) -> float:
        """The loss before the first update (``π_θ = π_ref``): ``(2/β)·ln 2``, 13863 at β = 1e-4.
        The divergence guard's ``train.max_abs_loss`` must lie above it (checked before training)."""
        return 2.0 / self.beta * math.log(2.0)

    def prepare(self, ctx: Any) -> None:
        self._ref = {}
        for role in ROLES:
            for batch in ctx.batches(role):
                total, count = token_nll(ctx.reference_logits(batch), batch["labels"])
                for rid, t, n in zip(ids_of(batch), total.tolist(), count.tolist(), strict=True):
                    self._ref[rid] = (-t, int(n))

    def reference_logps(self, batch: Batch, counts: Tensor) -> Tensor:
        """The cached ``log π_ref(y|x)`` of the batch rows, ``[B]``; unknown rows are an error."""
        out = []
        for rid, n in zip(ids_of(batch), counts.tolist(), strict=True):
            if rid not in self._ref:
                raise KeyError(
                    f"NPO has no reference log-prob for row {rid!r}: prepare() caches the forget and normal rows only"
                )
            logp, m = self._ref[rid]
            if m != int(n):
                raise ValueError(
                    f"NPO's cached reference of row {rid!r} covers {m} answer tokens, the batch has {int(n)}: stale "
                    "cache"
                )
            out.append(logp)
        return torch.tensor(out, dtype=torch.float32, device=counts.device)

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        total, count = sequence_nll(model, batch)
        return npo_loss(-total, self.reference_logps(batch, count), self.beta)
