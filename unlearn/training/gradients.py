"""Gradient plumbing: per-task buffers, accumulation, all-reduce, and writing ``.grad``.

This is the only place that moves gradients around; the math lives in :mod:`unlearn.combiners`.
The order (docs/methods.md §1) is: accumulate each task's gradient over the micro-batches in its own buffer,
all-reduce (mean) the buffers across ranks, and only then combine once.

Every task gradient comes from ``loss.backward()`` with a post-accumulate hook on each trainable
tensor that takes the gradient out of ``.grad`` as soon as autograd has produced it
(:meth:`TaskGradients.backward`). So accumulating adds one tensor at a time into the task's
buffer, and with one micro-batch on one device the combined update of a tensor can be formed
during the forget backward itself, from the retain buffer and the fresh forget gradient, and the
retain tensor freed at once (:class:`TensorwiseUpdate`): the step then holds one gradient buffer,
like a plain backward of ``L_f + L_r``. (The idea of working from backward hooks layer by layer is
TorchJD's ``autogram``.)

Replicated (DDP, ``trainer=ddp``): each task's buffer is a few flat buckets
(:class:`~unlearn.distributed.BucketedMean`), and on a step's last micro-batch a bucket's
all-reduce is launched from the backward hooks as soon as its tensors are final, so the retain
gradient is being averaged while the forget pass runs; the combine waits for them. A step issues
one collective per bucket per task and one for the logged losses.

Sharded (FSDP2, ``trainer=fsdp``): the parameters are DTensors and FSDP's own reduce-scatter
averages each task's gradient over the ranks and fires the same post-accumulate hooks with the
rank's shard. The buffers then hold the local shards (``to_local()``: half the size on two
ranks), nothing is all-reduced here, and the per-tensor sums a rule needs (PCGrad's ⟨g_f, g_r⟩
and ‖g_r‖²), and afterwards the statistics and diagnostics, are added over the shards in one
collective each (:func:`sum_over_ranks`), so the rule is the one on whole tensors.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from unlearn.combiners.base import Grads, TensorCombine, sq_norms
from unlearn.combiners.diagnostics import finish_diagnostics, tensor_diagnostics
from unlearn.distributed import BucketedMean, sum_over_ranks, world_size

Sink = Callable[[int, Tensor], None]


def local(t: Tensor) -> Tensor:
    """The rank's shard of a DTensor (FSDP), else the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def full_tensor(shard: Tensor, like: Tensor) -> Tensor:
    """The whole tensor of which ``shard`` is this rank's part, sharded as the DTensor ``like``
    (a collective); ``shard`` itself when ``like`` is not sharded."""
    if not isinstance(like, DTensor):
        return shard
    return DTensor.from_local(
        shard, like.device_mesh, like.placements, run_check=False, shape=like.shape, stride=like.stride()
    ).full_tensor()


def shard_of(whole: Tensor, like: Tensor) -> Tensor:
    """This rank's part of ``whole``, sharded as the DTensor ``like`` (no communication)."""
    if not isinstance(like, DTensor) or isinstance(whole, DTensor):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements, src_data_rank=None).to_local()


def set_grad(p: Tensor, u: Tensor) -> None:
    """``p.grad = u`` in ``p``'s dtype; ``u`` a local shard when ``p`` is a sharded DTensor."""
    u = u if u.dtype == p.dtype else u.to(p.dtype)
    if isinstance(p, DTensor) and not isinstance(u, DTensor):
        u = DTensor.from_local(u, p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride())
    p.grad = u


def clip_(params: Sequence[Tensor], total_norm: Tensor, max_norm: float) -> None:
    """Scale every ``.grad`` by ``min(1, max_norm / (total_norm + 1e-6))``, torch's
    ``clip_grad_norm_`` rule, given the norm of the whole update (sharded: of the whole tensors),
    which the step computes anyway for the divergence guard: no second pass over the gradients."""
    grads = [local(p.grad) for p in params if p.grad is not None]
    if grads:
        coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef.to(grads[0].device))


class TaskGradients:
    """Separate gradient buffers for named tasks over one list of trainable parameters."""

    def __init__(self, params: Sequence[nn.Parameter], names: Sequence[str]) -> None:
        if len(params) != len(names):
            raise ValueError(f"{len(params)} parameters but {len(names)} names")
        self.params = list(params)
        self.names = list(names)
        self.buffers: dict[str, list[Tensor]] = {}
        self.reducing: dict[str, BucketedMean] = {}  # several unsharded ranks: the buffers' buckets, being averaged
        self.sharded = any(isinstance(p, DTensor) for p in self.params)  # FSDP: buffers hold local shards

    def accumulate(self, task: str, loss: Tensor, scale: float = 1.0, last: bool = True) -> None:
        """Add ``scale * ∇loss`` to the task's buffer (the first call takes the gradients as is).

        With several (unsharded) ranks the buffer is a :class:`~unlearn.distributed.BucketedMean`'s
        flat buckets, and on the step's ``last`` micro-batch each bucket's all-reduce is launched
        during this backward pass, as soon as its tensors are final; :meth:`all_reduce` waits.
        """
        buf = self.buffers.setdefault(task, [None] * len(self.params))  # type: ignore[list-item]
        buckets = self.reducing.get(task)
        if buckets is None and world_size() > 1 and not self.sharded:
            buckets = self.reducing[task] = BucketedMean(self.params)

        def add(i: int, g: Tensor) -> None:
            if buf[i] is not None:
                buf[i].add_(g)
            elif buckets is not None:
                buf[i] = buckets.views[i].copy_(g)
            else:
                buf[i] = g
            if buckets is not None and last:
                buckets.ready(i)

        self.backward(loss * scale if scale != 1.0 else loss, add)

    def backward(self, loss: Tensor, sink: Sink, once: bool = False) -> None:
        """``loss.backward()``, handing each trainable tensor's gradient to ``sink(i, g)`` as soon as
        autograd has produced it and leaving ``.grad`` as the sink sets it; then ``sink(i, zeros)``
        for each tensor the loss does not reach. The hooks exist only during this call, so no other
        backward pass (evaluation, SGA's probe) sees them.

        ``once``: a tensor whose gradient arrives in two pieces (a weight tied across a reentrant
        checkpoint) is an error, for a sink that cannot add a second piece to what it wrote.
        """
        for n, p in zip(self.names, self.params, strict=True):
            if p.grad is not None:
                raise RuntimeError(
                    f"{n}.grad must be empty before a task's backward pass (it would be mixed into the task gradient)"
                )
        seen = [False] * len(self.params)

        def hook(i: int) -> Callable[[Tensor], None]:
            def take(p: Tensor) -> None:
                if seen[i] and once:
                    raise RuntimeError(
                        f"{self.names[i]} received its gradient in two pieces in one backward pass "
                        "(a weight tied across a reentrant checkpoint?), which the streaming step cannot combine: "
                        "set train.stream=false"
                    )
                seen[i] = True
                g, p.grad = p.grad, None
                assert g is not None  # a post-accumulate hook fires with the gradient in .grad
                sink(i, local(g))

            return take

        handles = [p.register_post_accumulate_grad_hook(hook(i)) for i, p in enumerate(self.params)]
        try:
            if loss.requires_grad:  # else a loss that does not touch the trainable parameters
                loss.backward()
        finally:
            for h in handles:
                h.remove()
        for i, p in enumerate(self.params):
            if not seen[i]:
                sink(i, torch.zeros_like(local(p)))

    def all_reduce(self) -> None:
        """Average every buffer across data-parallel ranks: wait for the bucketed all-reduces that
        :meth:`accumulate` launched (nothing in one process, and nothing when sharded: FSDP's
        reduce-scatter has averaged each shard already)."""
        for task in sorted(self.reducing):  # same order on every rank
            self.reducing.pop(task).wait()

    def get(self, task: str) -> list[Tensor] | None:
        return self.buffers.get(task)

    def write(self, update: Sequence[Tensor]) -> None:
        """Make ``update`` the parameters' ``.grad`` (ready for clipping and the optimizer step)."""
        for p, u in zip(self.params, update, strict=True):
            set_grad(p, u)

    def drain(self, task: str, sink: Sink) -> None:
        """Hand the task's buffer to ``sink`` tensor by tensor, dropping each tensor after it."""
        buf = self.buffers[task]
        for i in range(len(buf)):
            g, buf[i] = buf[i], None  # type: ignore[call-overload]
            sink(i, g)

    def reset(self) -> None:
        self.buffers.clear()
        self.reducing.clear()


class TensorwiseUpdate:
    """A sink that turns tensor ``i``'s forget gradient into its update, written to ``.grad``.

    ``update_i = rule(g_r[i], g_f[i], ref_i)`` (``run`` is the combiner's per-tensor combination);
    ``g_r[i]`` is dropped from the retain buffer at once, so the buffer shrinks as ``.grad`` fills.
    ``ref_i`` is ``ref[i]`` when given, else the retain EMA updated for this tensor, else
    ``g_r[i]``. Diagnostics are kept as each tensor's few 0-dim shares, reduced in :meth:`stats`.
    """

    def __init__(
        self,
        grads: TaskGradients,
        run: TensorCombine,
        *,
        ema: "GradientEMA | None" = None,
        ref: Grads | None = None,
        diagnostics: bool = True,
    ) -> None:
        self.grads, self.run, self.ema, self.ref, self.diagnostics = grads, run, ema, ref, diagnostics
        self.retain = grads.buffers["retain"]
        self.parts: dict[int, dict[str, Tensor]] = {}

    def __call__(self, i: int, f: Tensor) -> None:
        r = self.retain[i]
        if self.ref is not None:
            s = self.ref[i]
        else:
            s = self.ema.update_tensor(i, r, len(self.retain)) if self.ema is not None else r
        # Without diagnostics nothing reads g_r[i] after the rule, so the update may take its storage.
        u = self.run.tensor(i, r, f, s, out=None if self.diagnostics else r)
        if self.diagnostics:
            self.parts[i] = tensor_diagnostics(r, f, u)
        self.retain[i] = None  # type: ignore[call-overload]
        set_grad(self.grads.params[i], u)

    def stats(self) -> dict[str, Tensor]:
        """The combiner's statistics and the diagnostics; sharded, their per-tensor shares are
        first added over the ranks, all in one collective."""
        if self.diagnostics:
            parts = [self.parts[i] for i in sorted(self.parts)]
        else:  # the update's norm alone (the divergence guard's), in one foreach call over .grad
            parts = [{"nu2": sq_norms([local(p.grad) for p in self.grads.params if p.grad is not None]).sum()}]
        if not self.grads.sharded:
            stats = self.run.stats()
        else:
            own = self.run.part_stats()
            summed = sum_over_ranks([*own, *parts])
            stats, parts = self.run.stats(summed[: len(own)]), summed[len(own) :]
        if self.diagnostics:
            stats.update(finish_diagnostics(parts))
        else:
            stats["norm_update"] = torch.sqrt(parts[0]["nu2"])
        return stats


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
        for i, t in enumerate(g):
            self.update_tensor(i, t, len(g))
        assert self.value is not None
        return self.value

    def update_tensor(self, i: int, g: Tensor, n: int) -> Tensor:
        """Update tensor ``i`` of ``n`` alone (inside a backward hook): the same arithmetic."""
        if self.value is None:
            self.value = [None] * n  # type: ignore[list-item]
        if self.value[i] is None:
            self.value[i] = g.detach().clone()
        else:
            if self.value[i].device != g.device:  # restored from a checkpoint, which Lightning loads onto the CPU
                self.value[i] = self.value[i].to(g.device)
            self.value[i].mul_(self.decay).add_(g, alpha=1.0 - self.decay)
        return self.value[i]
