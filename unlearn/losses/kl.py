"""KL retain loss: keep the model's next-token distributions on retain data where they started."""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.hooks import Component
from unlearn.losses.common import Batch, logits_of


def token_kl(ref_logits: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
    """``KL(π_ref ‖ π_θ)`` of each next-token distribution, averaged over a sample's labelled
    positions: ``[B, T, V]`` twice and ``[B, T]`` labels → ``[B]`` (fp32)."""
    logq = F.log_softmax(logits[:, :-1, :].float(), dim=-1)
    logp = F.log_softmax(ref_logits[:, :-1, :].float(), dim=-1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1)
    mask = labels[:, 1:] != -100
    return (kl * mask).sum(-1) / mask.sum(-1).clamp_min(1)


class KL(Component):
    """Retain loss ``KL(π_ref(·|x_r) ‖ π_θ(·|x_r))`` token-averaged over the retain answer tokens
    (docs/methods.md §4), per sample.

    The reference is :class:`~unlearn.models.reference.Reference`, not a second model: a full
    fine-tune keeps one copy of the *trainable* weights (as large as the model when everything
    trains; no optimizer state, no gradients), LoRA keeps nothing (the base with the adapter
    disabled). Every step then costs one extra no-grad forward of the retain batch and its
    ``[B, T, V]`` reference logits.
    """

    runs_reference = True  # runs the frozen starting model during training (see unlearn.training.fsdp.check_sharded)

    def __init__(self) -> None:
        self._reference: Any = None

    def __repr__(self) -> str:
        return "KL()"

    def prepare(self, ctx: Any) -> None:
        ctx.reference.snapshot()
        self._reference = ctx.reference

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        if self._reference is None:
            raise RuntimeError("retain=kl needs prepare(ctx) before training (it holds the reference model)")
        ref = self._reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return token_kl(ref, logits_of(model, batch), batch["labels"])
