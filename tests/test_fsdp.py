"""Sharded data parallelism (``trainer=fsdp``, FSDP2 over gloo on CPU): two processes, each holding
half of every gradient, must end with the same parameters and log the same diagnostics as one
process trained on the union of their batches, for every combiner the issue names, with and
without accumulation. The per-tensor sums of PCGrad (and the diagnostics) are added over the
shards; taking them on each rank's shard alone (what a ZeRO-3 port does) would change the rule."""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from unlearn.combiners import SAGO, PCGrad, PCGradGlobal, PCGradSymmetric, Sum
from unlearn.data.format import PromptFormat, encode_rows
from unlearn.data.paired import PairedStream
from unlearn.loggers import read_metrics
from unlearn.losses import GA, NLL, Objective
from unlearn.training.fit import LoopConfig, fit, quiet_lightning, stream_length
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.training.optim import OptimConfig

FSDP = {"_target_": "unlearn.training.fsdp.TaskFSDPStrategy", "start_method": "spawn", "process_group_backend": "gloo"}
STEPS, BATCH, WORLD = 3, 2, 2
COMBINERS = {
    "sum": Sum(),
    "pcgrad": PCGrad(),
    "pcgrad_global": PCGradGlobal(),
    "sago": SAGO(),
    "sago_prefer_retain": SAGO(prefer_retain=True),
    "pcgrad_symmetric": PCGradSymmetric(),
    "sago_soft": SAGO(gate="soft"),  # its per-tensor scale is a sum over the shards too
}


def _stream(tok, splits, batch: int, accumulate: int, world: int = 1) -> PairedStream:
    fmt = PromptFormat()
    f, r = encode_rows(tok, fmt, splits["forget"], 64), encode_rows(tok, fmt, splits["retain"], 64)
    return PairedStream(f, r, stream_length(STEPS, accumulate, batch, world), seed=0)


def _run(model, tok, splits, combiner, accumulate: int, world: int, tmp_path, objective=None, lora=None):
    from unlearn.models.reference import Reference

    m = copy.deepcopy(model)
    if lora is not None:
        from unlearn.models.lora import apply_lora

        torch.manual_seed(0)  # the same random adapter initialisation in both runs
        m = apply_lora(m, lora)
    objective = objective or Objective(forget=GA(), retain=NLL())
    for c in objective.components():  # KL's and RMU's prepare take the model and the reference
        if hasattr(c, "prepare"):
            c.prepare(type("Ctx", (), {"reference": Reference(m), "model": m})())
    # lr 1e-4: AdamW's first steps are nearly sign(g)·lr, so a coordinate whose gradient is ~0 can
    # move by ±lr on a rounding difference of the reduction order; the parameters still move by
    # ~3e-4 each, 30 times the tolerance, and the diagnostics compare the rule itself
    module = UnlearnModule(
        m,
        objective,
        combiner,
        OptimConfig(lr=1e-4, warmup_ratio=0.0, schedule="constant"),
        StepConfig(accumulate=accumulate, stream=False),
    )
    loop = LoopConfig(
        accelerator="cpu", devices=world, strategy=FSDP if world > 1 else "auto", enable_progress_bar=False
    )
    trainer = fit(
        module,
        _stream(tok, splits, BATCH * (WORLD // world), accumulate, world),
        tok.pad_token_id,
        BATCH * (WORLD // world),
        STEPS,
        loop,
        default_root_dir=str(tmp_path / f"w{world}"),
    )
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/grad/")}
    return module, {n: p.detach().clone() for n, p in m.named_parameters()}, logged


def _shards(ts, k=2):
    return [list(t.chunk(k)) for t in ts]  # FSDP2 splits dim 0 the same way


def _sharded_combine(c, g_r, g_f):
    """The sharded step's arithmetic in one process: each "rank" combines its chunks, with the
    per-tensor sums and statistics added over the ranks (what sum_over_ranks does)."""
    r_sh, f_sh = _shards(g_r), _shards(g_f)
    runs = [c.start(None, len(g_r)) for _ in range(2)]
    local = [[c._sums(r[k], f[k], r[k]) for r, f in zip(r_sh, f_sh, strict=True)] for k in range(2)]
    added = [{key: a[key] + b[key] for key in a} for a, b in zip(*local, strict=True)]
    for k, run in enumerate(runs):
        run.prepare([r[k] for r in r_sh], [f[k] for f in f_sh], [r[k] for r in r_sh], reduce=lambda sums: added)
    ups = [[run.tensor(i, r_sh[i][k], f_sh[i][k], r_sh[i][k]) for i in range(len(g_r))] for k, run in enumerate(runs)]
    parts = [run.part_stats() for run in runs]
    summed = [{key: a[key] + b[key] for key in a} for a, b in zip(*parts, strict=True)]
    return [torch.cat([ups[0][i], ups[1][i]]) for i in range(len(g_r))], runs[0].stats(summed)


@pytest.mark.parametrize("name", list(COMBINERS))
def test_sums_over_shards_give_the_whole_tensor_rule(name):
    g = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (5, 3), (7,)]  # odd first dimensions: unequal shards
    g_r = [torch.randn(s, generator=g) for s in shapes]
    g_f = [torch.randn(s, generator=g) - 0.5 * r for s, r in zip(shapes, g_r, strict=True)]
    c = COMBINERS[name]
    whole = c.combine(g_r, g_f)
    update, stats = _sharded_combine(c, g_r, g_f)
    for u, w in zip(update, whole.update, strict=True):
        torch.testing.assert_close(u, w, rtol=1e-6, atol=1e-6)
    assert stats.keys() == whole.stats.keys()
    for k in stats:
        torch.testing.assert_close(stats[k].float(), whole.stats[k].float(), rtol=1e-6, atol=1e-6, msg=k)


def test_shard_local_pcgrad_is_a_different_rule():
    """Guards the tests here: PCGrad with each shard's own dot products (a ZeRO-3 port) differs."""
    g = torch.Generator().manual_seed(1)
    g_r = [torch.randn(8, 4, generator=g)]
    g_f = [torch.cat([-g_r[0][:4] + 0.1 * torch.randn(4, 4, generator=g), g_r[0][4:] + torch.randn(4, 4, generator=g)])]
    whole = PCGrad()(g_r, g_f)[0]
    local = torch.cat([PCGrad()([r], [f])[0] for r, f in zip(g_r[0].chunk(2), g_f[0].chunk(2), strict=True)])
    assert float((whole - local).abs().max()) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("name", list(COMBINERS))
def test_two_sharded_processes_equal_one_process(tiny, toy_splits, tmp_path, name, accumulate):
    quiet_lightning()
    model, tok = tiny
    one, a, log_a = _run(model, tok, toy_splits, COMBINERS[name], accumulate, 1, tmp_path)
    two, b, log_b = _run(model, tok, toy_splits, COMBINERS[name], accumulate, WORLD, tmp_path)
    assert two.steps_done == STEPS and not two.diverged
    start = {n: p for n, p in model.named_parameters()}
    assert all(float((start[n] - b[n]).abs().max()) > 1e-4 for n in b), (
        "the gathered weights must reach the main process"
    )
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-5, atol=1e-5, msg=f"{name}: {n} differs")
    assert set(log_a) == set(log_b) and log_a
    for k in log_a:  # the last step's diagnostics, from the whole tensors on both sides
        assert log_b[k] == pytest.approx(log_a[k], rel=1e-4, abs=1e-6), f"{name}: {k}"


class GradSizes(L.Callback):
    """Logs, before each optimizer step, how many gradient elements this rank holds (local shards)
    and how many the whole model has; the workers' logs reach the main process."""

    def on_before_optimizer_step(self, trainer, module, optimizer):
        grads = [p.grad for p in module.grads.params]
        held = sum((g.to_local() if isinstance(g, DTensor) else g).numel() for g in grads)
        # the buffers are the shards the hooks handed over: every one was a local tensor
        module.log("test/held", float(held), batch_size=1)
        module.log("test/whole", float(sum(p.numel() for p in module.grads.params)), batch_size=1)
        module.log(
            "test/buffer_dtensors",
            float(sum(isinstance(g, DTensor) for b in module.grads.buffers.values() for g in b if g is not None)),
            batch_size=1,
        )


@pytest.mark.slow
def test_each_rank_holds_half_of_every_gradient(tiny, toy_splits, tmp_path):
    quiet_lightning()
    model, tok = tiny
    module = UnlearnModule(
        copy.deepcopy(model),
        Objective(forget=GA(), retain=NLL()),
        PCGrad(),
        OptimConfig(lr=1e-3, warmup_ratio=0.0),
        StepConfig(accumulate=2),
    )
    loop = LoopConfig(accelerator="cpu", devices=WORLD, strategy=FSDP, enable_progress_bar=False)
    trainer = fit(
        module,
        _stream(tok, toy_splits, BATCH, 2, WORLD),
        tok.pad_token_id,
        BATCH,
        STEPS,
        loop,
        callbacks=[GradSizes()],
        default_root_dir=str(tmp_path),
    )
    m = trainer.callback_metrics
    assert float(m["test/whole"]) == sum(p.numel() for p in model.parameters())
    # FSDP2 splits each tensor's first dimension, rank 0 taking the larger part when it is odd
    rank0 = sum(-(-p.shape[0] // WORLD) * (p.numel() // p.shape[0]) for p in model.parameters())
    assert float(m["test/held"]) == rank0 and rank0 <= 1.01 * float(m["test/whole"]) / WORLD
    assert float(m["test/buffer_dtensors"]) == 0


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-5)
    return a == b


@pytest.mark.slow
def test_lora_with_a_kl_reference_sharded_equals_one_process(tiny, toy_splits, tmp_path):
    """LoRA under FSDP: frozen base weights and trainable adapters in the same units, and KL's
    reference (the base with the adapter off) run inside the sharded model."""
    from unlearn.losses import KL

    quiet_lightning()
    model, tok = tiny
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    runs = [
        _run(model, tok, toy_splits, PCGrad(), 1, w, tmp_path, objective=Objective(forget=GA(), retain=KL()), lora=lora)
        for w in (1, WORLD)
    ]
    (one, a, log_a), (two, b, log_b) = runs
    assert two.steps_done == STEPS and any("lora" in n for n in b)
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-5, atol=1e-5, msg=n)
    for k in log_a:
        assert log_b[k] == pytest.approx(log_a[k], rel=1e-4, abs=1e-6), k


@pytest.mark.slow
def test_rmu_with_lora_sharded_equals_one_process(tiny, toy_splits, tmp_path):
    """RMU under FSDP (issue 10): only the adapters inside the chosen layers' mlp.down_proj train,
    every other tensor frozen in the same units, and RMU's retain term runs the reference (the
    base with the adapter off) inside the sharded model."""
    from unlearn.losses import RMU, RMURetain

    quiet_lightning()
    model, tok = tiny
    lora = {"r": 4, "alpha": 8, "target_modules": ["down_proj", "q_proj"]}
    objective = lambda: Objective(forget=RMU(layer=1, update_layers=[1]), retain=RMURetain(layer=1))  # noqa: E731
    runs = [_run(model, tok, toy_splits, SAGO(), 1, w, tmp_path, objective=objective(), lora=lora) for w in (1, WORLD)]
    (one, a, log_a), (two, b, log_b) = runs
    trained = [n for n, p in two.model.named_parameters() if p.requires_grad]
    assert two.steps_done == STEPS and trained and all("layers.1.mlp.down_proj.lora_" in n for n in trained), trained
    assert all(b[n].abs().sum() > 0 for n in trained if "lora_B" in n), "the adapters (lora_B starts at zero) moved"
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-5, atol=1e-5, msg=n)
    for k in log_a:
        assert log_b[k] == pytest.approx(log_a[k], rel=1e-4, abs=1e-6), k


# -- the whole job under trainer=fsdp: checkpoints, the EMA state, resuming, saving the model --------
BATCH = 4  # per process
CLI = [
    "experiment=smoke",
    "trainer=fsdp",
    f"train.batch_size={BATCH}",
    "train.steps=6",
    "train.checkpoint_every=2",
    "train.retain_ema=0.9",
    "save_model=true",
    "hydra.run.dir=run",
]


# "half": the cut run resumes on one process at twice the batch (the same global batch, so the
# same run: a preempted job relaunched on fewer GPUs; its checkpoint holds whole tensors). Across
# process counts the sums round differently, and SAGO's sign gate turns that into whole-coordinate
# flips that Adam scales up (~5e-3 on the weights here, with or without a resume); PCGrad at
# gamma 0.5 is smooth enough that two processes and one agree to 2.3e-5 without a resume.
RESUME_ON = {
    "same": ([], [], 1e-5),
    "half": (["combiner=pcgrad", "combiner.gamma=0.5"], ["trainer.devices=1", f"train.batch_size={2 * BATCH}"], 1e-4),
}


@pytest.mark.slow
@pytest.mark.parametrize("resume_on", sorted(RESUME_ON))
def test_cli_fsdp_run_killed_mid_training_resumes_and_equals_the_uninterrupted_run(tmp_path, cache_dir, resume_on):
    extra, again, tol = RESUME_ON[resume_on]
    cli = [*CLI, *extra]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    proc = run_cli(cli, cwd=whole, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = json.loads((whole / "run" / "results.json").read_text())
    assert ref["status"] == "ok" and ref["train/steps_done"] == 6
    assert ref["eval/toy/forget_prob"] < ref["target/toy/forget_prob"]
    steps = [r["step"] for r in read_metrics(whole / "run" / "metrics.jsonl") if r.get("phase") == "unlearn"]
    assert steps == list(range(6)), "one metrics row per step: only rank 0 logs"

    proc = run_cli([*cli, "train.callbacks=[{_target_:killers.KillAt,step:3}]"], cwd=cut, cache=cache_dir)
    assert proc.returncode != 0 and (cut / "run" / "checkpoints" / "last.ckpt").exists()
    proc = run_cli([*cli, *again], cwd=cut, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after step 2" in " ".join(proc.stderr.split())
    res = json.loads((cut / "run" / "results.json").read_text())
    differ = {k for k in ref.keys() | res.keys() if not k.startswith("time/") and not _same(res.get(k), ref.get(k))}
    assert not differ, {k: (res.get(k), ref.get(k)) for k in sorted(differ)}
    a, b = (
        load_file(str(whole / "run" / "model" / "model.safetensors")),
        load_file(str(cut / "run" / "model" / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(not isinstance(t, DTensor) for t in a.values())
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=tol, atol=tol, msg=n)


# -- what trainer=fsdp cannot honour stops before training, naming the key and the alternative -----
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["retain=kl"], "KL runs the frozen starting model during training.*set model.lora.*or use trainer=ddp"),
        (["method=rmu"], "RMURetain runs the frozen starting model.*set model.lora"),
        (
            ["method=sga", "smoothing.rate=auto"],
            "smoothing.rate=auto .* set smoothing.rate to a number or use trainer=ddp",
        ),
        (["train.stream=true"], "train.stream=true needs one device, but this run has 2 processes"),
        (
            ["train.stream=true", "train.accumulate=2"],
            "train.stream=true combines each tensor .* train.accumulate=2: set train.stream=null",
        ),
    ],
)
def test_fsdp_refuses_what_it_cannot_honour_before_training(tmp_path, overrides, expected):
    from conftest import job_config

    from unlearn.config import ConfigError
    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    with pytest.raises(ConfigError, match=expected):
        build_job(job_config(["trainer=fsdp", *overrides, f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run"))


def test_fsdp_refuses_a_whole_list_combiner_and_takes_npo(tmp_path):
    from conftest import job_config

    from unlearn.combiners.base import Combination, Combiner
    from unlearn.job import build_job
    from unlearn.rundir import RunDir
    from unlearn.training.fsdp import check_sharded

    class WholeList(Combiner):
        def _combine(self, g_r, g_f, ref):
            return Combination([r + f for r, f in zip(g_r, g_f, strict=True)])

    (msg,) = check_sharded(WholeList(), None, lora=False, smoothing_rate=0.0)
    assert "implements _combine on whole lists" in msg and "or use trainer=ddp" in msg
    assert check_sharded(PCGrad(), None, lora=False, smoothing_rate=0.0) == []
    s = build_job(job_config(["trainer=fsdp", "method=npo", f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "ok"))
    assert s.loop.world_size == 2  # NPO's reference is cached before training: fine under FSDP
