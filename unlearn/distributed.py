"""Collectives over the data-parallel ranks (each the identity in one process).

Kept low in the house: the gradient plumbing (:mod:`unlearn.training.gradients`), the training
module and SGA's ``rate: auto`` (:mod:`unlearn.smoothing.auto`) all reduce through these.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor


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


def sum_over_ranks(parts: Sequence[Mapping[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Add per-tensor 0-dim values over the ranks in one collective (fp64, so counts stay exact).

    Every rank holds the same tensors and keys (its shard's share of each); the dtypes come back.
    """
    parts = [dict(p) for p in parts]
    if world_size() == 1:
        return parts
    slots = [(i, k) for i, p in enumerate(parts) for k in sorted(p)]
    if not slots:
        return parts
    flat = torch.stack([parts[i][k].detach().reshape(()).to(torch.float64) for i, k in slots])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    for (i, k), v in zip(slots, flat.unbind()):
        parts[i][k] = v.to(parts[i][k].dtype)
    return parts


def all_reduce_mean(tensors: Sequence[Tensor]) -> None:
    """Average each tensor in place across data-parallel ranks (a no-op in one process)."""
    world = world_size()
    if world == 1 or not tensors:
        return
    for g in tensors:
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
    torch._foreach_div_(list(tensors), float(world))
