"""The frozen starting model, without a second full copy of the network.

Reference-based losses (NPO, KL, RMU's retain term) need ``π_ref``, the model as it was before
unlearning. Only the *trainable* parameters ever change, so the reference is the live model run
with a snapshot of just those parameters swapped in (``torch.func.functional_call``). With a LoRA
adapter (PEFT) the reference is the base model with the adapter disabled: no copy at all.
It lives in models/ (not training/) because the loss components use it, and they sit below training/.
Costs: a full fine-tune keeps one extra copy of the trainable weights (no optimizer state, no
gradients); LoRA keeps nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout: a reference value is a function of the weights alone),
    then every submodule back in its own mode as it was."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class Reference:
    """Call it like the model (keyword inputs); it runs under ``no_grad``, in eval mode (no
    dropout), with the initial weights."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._snapshot: dict[str, Tensor] | None = None

    def snapshot(self) -> None:
        """Freeze the current trainable weights as the reference (call before training starts).

        Idempotent: the first call wins, so every component that needs the reference may ask for
        it in its ``prepare``. Call it after any change of ``requires_grad`` (RMU freezes most of
        the model first, so only its few trained tensors are copied).
        """
        if is_peft(self.model) or self._snapshot is not None:
            return
        self._snapshot = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    @property
    def memory_bytes(self) -> int:
        if not self._snapshot:
            return 0
        return sum(t.numel() * t.element_size() for t in self._snapshot.values())

    @torch.no_grad()
    def __call__(self, **inputs: Any) -> Any:
        with eval_mode(self.model):
            return self._forward(**inputs)

    def _forward(self, **inputs: Any) -> Any:
        if is_peft(self.model):
            # PEFT's disable_adapter() marks every adapter tensor trainable again on exit, which
            # would undo RMU's choice of the few it trains; the flags are put back as they were.
            trainable = [p.requires_grad for p in self.model.parameters()]
            try:
                peft: Any = self.model  # disable_adapter is PEFT's API, not nn.Module's
                with peft.disable_adapter():
                    return self.model(**inputs)
            finally:
                for p, flag in zip(self.model.parameters(), trainable, strict=True):
                    p.requires_grad_(flag)
        if self._snapshot is None:
            raise RuntimeError("Reference.snapshot() must be called before the reference model is used")
        return functional_call(self.model, self._snapshot, args=(), kwargs=inputs, strict=False)
