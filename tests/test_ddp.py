"""Data parallelism (docs/methods.md §1): each task's gradient is accumulated, averaged across ranks, and only
then combined. Two CPU processes (Lightning DDP over gloo) must end with the same parameters as one
process trained on the union of their batches, with a nonlinear combiner (SAGO)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import run_cli

from unlearn.combiners import SAGO
from unlearn.data.format import PromptFormat, encode_rows
from unlearn.data.paired import PairedCollate, PairedStream
from unlearn.loggers import read_metrics
from unlearn.losses import GA, NLL, Objective
from unlearn.training.fit import LoopConfig, fit, quiet_lightning, stream_length
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.training.optim import OptimConfig

DDP = {"_target_": "unlearn.training.ddp.TaskDDPStrategy", "start_method": "spawn", "process_group_backend": "gloo"}
STEPS, BATCH, ACCUMULATE, WORLD = 3, 2, 2, 2


def _stream(tok, splits, batch: int, world: int = 1) -> PairedStream:
    fmt = PromptFormat()
    f, r = encode_rows(tok, fmt, splits["forget"], 64), encode_rows(tok, fmt, splits["retain"], 64)
    return PairedStream(f, r, stream_length(STEPS, ACCUMULATE, batch, world), seed=0)


def _module(model):
    return UnlearnModule(
        model,
        Objective(forget=GA(), retain=NLL()),
        SAGO(),
        OptimConfig(lr=1e-3, warmup_ratio=0.0, schedule="constant"),
        StepConfig(accumulate=ACCUMULATE),
    )


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_union_of_their_batches(tiny, toy_splits, tmp_path):
    quiet_lightning()
    model, tok = tiny
    # Rank r takes items r, r+2, r+4... (DistributedSampler, no shuffle), so its k-th micro-batch
    # and the other rank's together are the k-th micro-batch of one process with twice the batch.
    one = copy.deepcopy(model)
    fit(
        _module(one),
        _stream(tok, toy_splits, WORLD * BATCH),
        tok.pad_token_id,
        WORLD * BATCH,
        STEPS,
        LoopConfig(accelerator="cpu", enable_progress_bar=False),
    )

    two = copy.deepcopy(model)
    module = _module(two)
    loop = LoopConfig(accelerator="cpu", devices=WORLD, strategy=DDP, enable_progress_bar=False)
    assert loop.world_size == WORLD
    fit(
        module,
        _stream(tok, toy_splits, BATCH, WORLD),
        tok.pad_token_id,
        BATCH,
        STEPS,
        loop,
        default_root_dir=str(tmp_path),
    )

    assert module.steps_done == STEPS and not module.diverged, "the workers' outcome must reach the main process"
    start, a, b = _params(model), _params(one), _params(two)
    assert all(not torch.equal(start[n], b[n]) for n in b), "the workers' weights must reach the main process"
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-5, msg=f"{n} differs")  # steps move them ~3e-3


def test_combining_before_the_all_reduce_would_differ(tiny, toy_splits):
    """Guards the test above: averaging per-rank SAGO updates (combining before the all-reduce)
    gives an update far from SAGO of the averaged gradients, so that test can fail."""
    model, tok = tiny
    m = copy.deepcopy(model)
    params = list(m.parameters())
    objective = Objective(forget=GA(), retain=NLL())
    stream, collate = _stream(tok, toy_splits, BATCH, WORLD), PairedCollate(tok.pad_token_id)
    step_items = range(ACCUMULATE * BATCH * WORLD)  # the first optimizer step, over both ranks

    def grads(items, task):
        total = [torch.zeros_like(p) for p in params]
        for k in range(0, len(items), BATCH):  # micro-batches of BATCH items, accumulated
            g = torch.autograd.grad(objective.loss(task, m, collate([stream[i] for i in items[k : k + BATCH]])), params)
            total = [t + x / (len(items) // BATCH) for t, x in zip(total, g, strict=True)]
        return total

    per_rank = [[i for i in step_items if i % WORLD == r] for r in range(WORLD)]
    g = {r: (grads(items, "retain"), grads(items, "forget")) for r, items in enumerate(per_rank)}
    mean = lambda ts: [sum(x) / WORLD for x in zip(*ts, strict=True)]  # noqa: E731
    right = SAGO()(mean([g[r][0] for r in g]), mean([g[r][1] for r in g]))
    wrong = mean([SAGO()(*g[r]) for r in g])
    assert max(float((x - y).abs().max()) for x, y in zip(right, wrong, strict=True)) > 1e-3


def test_more_than_one_process_needs_the_task_strategy():
    with pytest.raises(ValueError, match="trainer.devices=2 needs a data-parallel strategy"):
        LoopConfig(devices=2)
    with pytest.raises(ValueError, match="trainer.devices must be"):
        LoopConfig(devices="auto", strategy=DDP)
    loop = LoopConfig(devices=[0, 1], strategy=DDP)
    assert loop.world_size == 2 and LoopConfig().world_size == 1
    single = loop.single_process()
    assert single.world_size == 1 and single.devices == 1 and single.strategy == "auto"


@pytest.mark.slow
def test_cli_trainer_ddp_trains_in_two_processes_and_writes_from_rank_zero_only(tmp_path, cache_dir):
    proc = run_cli(["experiment=smoke", "trainer=ddp", "hydra.run.dir=run"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "ok" and res["train/steps_done"] == 10, "the workers' outcome must reach the job"
    assert res["eval/toy/forget_prob"] < res["target/toy/forget_prob"]
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("phase") == "unlearn"]
    assert steps == list(range(10)), "one metrics row per step: only rank 0 logs"
