"""Gradient plumbing: per-task buffers, accumulation, all-reduce, and writing ``.grad``.

This is the only place that moves gradients around; the math lives in :mod:`unlearn.combiners`.
The order (spec §1) is: accumulate each task's gradient over the micro-batches in its own buffer,
all-reduce (mean) the buffers across ranks, and only then combine once.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn


def world_size() -> int:
    """Data-parallel ranks in the default process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_ranks(values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Average scalar tensors across ranks in one collective (the identity in one process)."""
    world = world_size()
    if world == 1 or not values:
        return dict(values)
    keys = sorted(values)  # same order on every rank
    stacked = torch.stack([values[k].detach().float().reshape(()) for k in keys])
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    return dict(zip(keys, (stacked / world).unbind()))


def all_reduce_mean(tensors: Sequence[Tensor]) -> None:
    """Average each tensor in place across data-parallel ranks (a no-op in one process)."""
    world = world_size()
    if world == 1 or not tensors:
        return
    for g in tensors:
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
    torch._foreach_div_(list(tensors), float(world))


class TaskGradients:
    """Separate gradient buffers for named tasks over one list of trainable parameters."""

    def __init__(self, params: Sequence[nn.Parameter], names: Sequence[str]) -> None:
        if len(params) != len(names):
            raise ValueError(f"{len(params)} parameters but {len(names)} names")
        self.params = list(params)
        self.names = list(names)
        self.buffers: dict[str, list[Tensor]] = {}

    def accumulate(self, task: str, loss: Tensor, scale: float = 1.0) -> None:
        """Add ``scale * ∇loss`` to the task's buffer (the first call takes the gradients as is)."""
        if not loss.requires_grad:  # a loss that does not touch the trainable parameters
            grads: Sequence[Tensor | None] = [None] * len(self.params)
        else:
            grads = torch.autograd.grad(loss * scale, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.params)]
        buf = self.buffers.get(task)
        if buf is None:
            self.buffers[task] = list(grads)
        else:
            torch._foreach_add_(buf, list(grads))

    def all_reduce(self) -> None:
        """Average every buffer across data-parallel ranks (a no-op in one process)."""
        for task in sorted(self.buffers):  # same order on every rank
            all_reduce_mean(self.buffers[task])

    def get(self, task: str) -> list[Tensor] | None:
        return self.buffers.get(task)

    def write(self, update: Sequence[Tensor]) -> None:
        """Make ``update`` the parameters' ``.grad`` (ready for clipping and the optimizer step)."""
        for p, u in zip(self.params, update):
            p.grad = u if u.dtype == p.dtype else u.to(p.dtype)

    def reset(self) -> None:
        self.buffers.clear()


class GradientEMA:
    """Exponential moving average of a gradient, e.g. ``g_r`` for a steadier conflict test.

    ``ema ← decay·ema + (1 − decay)·g``; the first update copies ``g``. Kept out of the combiners
    because it is state, and they are pure.
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"train.retain_ema must be a decay in [0, 1), got {decay!r}")
        self.decay = decay
        self.value: list[Tensor] | None = None

    def update(self, g: Sequence[Tensor]) -> list[Tensor]:
        if self.value is None:
            self.value = [t.detach().clone() for t in g]
        else:
            torch._foreach_mul_(self.value, self.decay)
            torch._foreach_add_(self.value, list(g), alpha=1.0 - self.decay)
        return self.value
