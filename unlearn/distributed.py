"""Collectives over the data-parallel ranks (each the identity in one process).

Kept low in the house: the gradient plumbing (:mod:`unlearn.training.gradients`), the training
module and SGA's ``rate: auto`` (:mod:`unlearn.smoothing.auto`) all reduce through these.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

_ALONE = False


@contextmanager
def alone() -> Iterator[None]:
    """Within this block every collective here is the identity, though a process group exists:
    a one-process fit inside a launched job (rank 0 fine-tuning the target model while the other
    ranks wait for the cache) must not wait for ranks that are not training."""
    global _ALONE
    before, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = before


def world_size() -> int:
    """Data-parallel ranks in the default process group (1 without one, or :func:`alone`)."""
    if _ALONE:
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_ranks(values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Average scalar tensors across ranks in one collective (the identity in one process)."""
    world = world_size()
    if world == 1 or not values:
        return dict(values)
    keys = sorted(values)  # same order on every rank
    dev = collective_device()
    stacked = torch.stack([values[k].detach().to(dev, torch.float32).reshape(()) for k in keys])
    _all_reduce(stacked)
    return {k: v.to(values[k].device) for k, v in zip(keys, (stacked / world).unbind(), strict=True)}


def collective_device() -> torch.device:
    """Where a tensor must be for the process group's collectives: the current GPU under NCCL, else
    the CPU. Scalars made on the CPU (a tensor's element count) and on the GPU (its dot products)
    are stacked there: ``torch.stack`` refuses a mix of devices."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(parts: Sequence[Mapping[str, Tensor]]) -> list[dict[str, Tensor]]:
    """Add per-tensor 0-dim values over the ranks in one collective (fp64, so counts stay exact).

    Every rank holds the same tensors and keys (its shard's share of each); the dtypes come back.
    """
    out = [dict(p) for p in parts]
    if world_size() == 1:
        return out
    slots = [(i, k) for i, p in enumerate(out) for k in sorted(p)]
    if not slots:
        return out
    dev = collective_device()
    flat = torch.stack([out[i][k].detach().reshape(()).to(dev, torch.float64) for i, k in slots])
    _all_reduce(flat)
    for (i, k), v in zip(slots, flat.unbind(), strict=True):
        out[i][k] = v.to(out[i][k].device, out[i][k].dtype)
    return out


def all_reduce_mean(tensors: Sequence[Tensor]) -> None:
    """Average each tensor in place across data-parallel ranks, in buckets (a no-op in one process)."""
    if world_size() == 1 or not tensors:
        return
    buckets = BucketedMean(tensors)
    for i, t in enumerate(tensors):
        buckets.views[i].copy_(t)
        buckets.ready(i)
    for t, mean in zip(tensors, buckets.wait(), strict=True):
        t.copy_(mean)


#: Bytes per bucket of a bucketed reduction: DDP's default (``bucket_cap_mb=25``).
BUCKET_BYTES = 25 * 2**20

#: Collectives this process has issued through this module, by kind (the benchmark and the tests
#: read it; FSDP's own all-gathers and reduce-scatters are the engine's and not counted here).
ISSUED: dict[str, int] = {"all_reduce": 0}


def _all_reduce(t: Tensor, async_op: bool = False) -> Any:
    ISSUED["all_reduce"] += 1
    return dist.all_reduce(t, op=dist.ReduceOp.SUM, async_op=async_op)


def bucket_plan(like: Sequence[Tensor], cap_bytes: int = BUCKET_BYTES) -> list[list[int]]:
    """Tensor indices grouped into buckets: reverse order (the order a backward pass produces
    gradients, as DDP's), one dtype and device per bucket, at most ``cap_bytes`` each (a larger
    tensor has a bucket of its own)."""
    buckets: list[list[int]] = []
    size = 0
    for i in reversed(range(len(like))):
        t, nbytes = like[i], like[i].numel() * like[i].element_size()
        prev = like[buckets[-1][-1]] if buckets else None
        if prev is None or t.dtype != prev.dtype or t.device != prev.device or size + nbytes > cap_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += nbytes
    return buckets


class BucketedMean:
    """A list of tensors stored in a few flat buckets and averaged over the ranks, one all-reduce
    per bucket instead of one blocking call per tensor.

    Tensor ``i`` lives in :attr:`views` ``[i]``, a view into its bucket (:func:`bucket_plan`), so
    the reduction needs no copies. When tensor ``i`` holds its final value, :meth:`ready` says so;
    a bucket's all-reduce is launched, asynchronously, once every tensor of it *and of every
    earlier bucket* is ready. The launch order is therefore the same on every rank whatever order
    autograd fires its hooks in, and a bucket filled during one task's backward pass is reduced
    while the rest of that pass, and the next task's forward and backward, run. :meth:`wait`
    launches what is left, waits for every bucket and divides by the world size (sum, then
    divide: the arithmetic of a per-tensor all-reduce).
    """

    def __init__(self, like: Sequence[Tensor], cap_bytes: int = BUCKET_BYTES) -> None:
        self.buckets = bucket_plan(like, cap_bytes)
        self.flat: list[Tensor] = []
        self.views: list[Tensor] = [like[0]] * len(like)  # every slot is set below
        self.bucket_of = [0] * len(like)
        for k, members in enumerate(self.buckets):
            first = like[members[0]]
            flat = torch.empty(sum(like[i].numel() for i in members), dtype=first.dtype, device=first.device)
            offset = 0
            for i in members:
                n = like[i].numel()
                self.views[i] = flat[offset : offset + n].view(like[i].shape)
                self.bucket_of[i] = k
                offset += n
            self.flat.append(flat)
        self.missing = [len(b) for b in self.buckets]
        self.handles: list[Any] = []

    def ready(self, i: int) -> None:
        """Tensor ``i`` has its final value: launch every bucket that is now complete, in order."""
        self.missing[self.bucket_of[i]] -= 1
        while len(self.handles) < len(self.buckets) and self.missing[len(self.handles)] == 0:
            self.handles.append(_all_reduce(self.flat[len(self.handles)], async_op=True))

    def wait(self) -> list[Tensor]:
        """Average every bucket over the ranks (launching those not yet launched); the views."""
        unready = [self.buckets[k] for k, m in enumerate(self.missing) if m > 0]
        if unready:  # every rank would wait for a bucket this rank never launches
            raise RuntimeError(
                f"tensors {sorted(i for b in unready for i in b)[:8]} were never marked ready before the reduction"
            )
        for handle in self.handles:
            handle.wait()
        torch._foreach_div_(self.flat, float(world_size()))
        return self.views
