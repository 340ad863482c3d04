"""The bucketed all-reduce of ``trainer=ddp`` (issue 10, item 4), in two gloo processes.

Each task's gradient is averaged in a few flat buckets, one collective per bucket, launched from
the backward hooks in the same order on every rank whatever order the hooks fire in, and the
retain buckets are all in flight before the forget pass starts. The result must equal a
per-tensor all-reduce exactly.
"""

from __future__ import annotations

import os
import random
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from unlearn import distributed
from unlearn.distributed import BucketedMean, all_reduce_mean, bucket_plan
from unlearn.training.gradients import TaskGradients

WORLD = 2


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn) -> None:  # type: ignore[no-untyped-def]
    mp.spawn(fn, args=(WORLD, _port()), nprocs=WORLD, join=True)


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # every rank its own gradients


def _per_tensor_mean(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    out = [t.clone() for t in ts]
    for t in out:
        dist.all_reduce(t)
    return [t / dist.get_world_size() for t in out]


def _buckets_worker(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    shapes = [(3, 4), (5,), (7, 2), (1,), (6, 6), (2, 3)]
    dtypes = [torch.float32, torch.float32, torch.float64, torch.float64, torch.float32, torch.float32]
    ts = [torch.randn(s, dtype=d) for s, d in zip(shapes, dtypes, strict=True)]
    want = _per_tensor_mean(ts)
    before = distributed.ISSUED["all_reduce"]
    b = BucketedMean(ts, cap_bytes=64)
    order = list(range(len(ts)))
    random.Random(rank).shuffle(order)  # the ranks mark their tensors ready in different orders
    for i in order:
        b.views[i].copy_(ts[i])
        b.ready(i)
    for g, w in zip(b.wait(), want, strict=True):
        assert torch.equal(g, w)
    assert distributed.ISSUED["all_reduce"] - before == len(b.buckets) > 2
    copies = [t.clone() for t in ts]
    all_reduce_mean(copies)
    assert all(torch.equal(c, w) for c, w in zip(copies, want, strict=True))
    dist.destroy_process_group()


def test_buckets_equal_a_per_tensor_all_reduce_whatever_order_the_ranks_fill_them():
    _spawn(_buckets_worker)


def test_bucket_plan_follows_the_backward_order_and_splits_by_dtype_and_size():
    ts = [torch.zeros(4), torch.zeros(4), torch.zeros(4, dtype=torch.float64), torch.zeros(100), torch.zeros(2)]
    assert bucket_plan(ts, cap_bytes=40) == [[4], [3], [2], [1, 0]]
    assert bucket_plan(ts, cap_bytes=10**6) == [[4, 3], [2], [1, 0]]
    assert sorted(i for b in bucket_plan(ts, 8) for i in b) == list(range(5))


def _task_worker(rank: int, world: int, port: int) -> None:
    _init(rank, world, port)
    torch.manual_seed(0)  # the same model on every rank
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    unused = nn.Parameter(torch.ones(2))  # reached by no loss: its zeros are reduced too
    params = [*model.parameters(), unused]
    torch.manual_seed(100 + rank)
    data = {task: [torch.randn(4, 6) for _ in range(2)] for task in ("retain", "forget")}

    def loss(task: str, x: torch.Tensor) -> torch.Tensor:
        y = model(x)
        return y.pow(2).mean() if task == "retain" else -y.abs().mean()

    want = {}
    for task, xs in data.items():
        total = [torch.zeros_like(p) for p in params]
        for x in xs:
            g = torch.autograd.grad(loss(task, x) * 0.5, params, allow_unused=True)
            total = [t + (gi if gi is not None else 0) for t, gi in zip(total, g, strict=True)]
        want[task] = _per_tensor_mean(total)

    grads = TaskGradients(params, [f"p{i}" for i in range(len(params))])
    before = distributed.ISSUED["all_reduce"]
    for k in range(2):
        last = k == 1
        grads.accumulate("retain", loss("retain", data["retain"][k]), scale=0.5, last=last)
        if last:  # every retain bucket is in flight before the forget pass begins
            retain = grads.reducing["retain"]
            assert len(retain.handles) == len(retain.buckets)
        else:
            assert not grads.reducing["retain"].handles, "nothing is reduced before the last micro-batch"
        grads.accumulate("forget", loss("forget", data["forget"][k]), scale=0.5, last=last)
    n_buckets = len(grads.reducing["retain"].buckets) + len(grads.reducing["forget"].buckets)
    grads.all_reduce()
    assert distributed.ISSUED["all_reduce"] - before == n_buckets
    for task in want:
        for g, w in zip(grads.get(task), want[task], strict=True):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    dist.destroy_process_group()


def test_task_gradients_are_averaged_in_buckets_launched_during_the_backward_pass():
    _spawn(_task_worker)
