"""Interrupted jobs resume from their last checkpoint and end exactly where an uninterrupted run
ends; finished jobs are skipped when the same sweep runs again."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from unlearn.loggers import read_metrics

pytestmark = pytest.mark.slow

# SAGO with an EMA of g_r: the EMA buffer is state beyond weights and optimizer, so an exact
# match also shows it is checkpointed.
ARGS = [
    "experiment=smoke",
    "train.steps=8",
    "train.checkpoint_every=2",
    "train.retain_ema=0.9",
    "save_model=true",
    "hydra.run.dir=run",
]


def _weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def _results(run):
    return json.loads((run / "results.json").read_text())


def _steps(run):
    return [
        (r["step"], r["train/loss/forget"])
        for r in read_metrics(run / "metrics.jsonl")
        if r["phase"] == "unlearn" and "train/loss/forget" in r
    ]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, cache_dir):
    """The uninterrupted run every interrupted one must equal."""
    cwd = tmp_path_factory.mktemp("whole")
    proc = run_cli(ARGS, cwd=cwd, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / "run"


# (the interruption, the step whose checkpoint the next run resumes after). With 8 steps and a
# checkpoint every 2: before half-way (the run used to stop at 8 - 2 = 6 steps and call it ok),
# at half-way, past it, during the unlearned model's evaluation (after the step-8 checkpoint).
CASES = {
    "kill9_step3": ("{_target_:killers.KillAt,step:3}", 2),
    "kill9_step5": ("{_target_:killers.KillAt,step:5}", 4),
    "kill9_step7": ("{_target_:killers.KillAt,step:7}", 6),
    "kill9_in_eval": ("{_target_:killers.KillInEvaluation}", 8),
    "ctrlc_step3": ("{_target_:killers.KillAt,step:3,action:sigint}", 2),
    "ctrlc_step5": ("{_target_:killers.KillAt,step:5,action:sigint}", 4),
    "ctrlc_in_eval": ("{_target_:killers.KillInEvaluation,action:sigint}", 8),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_interrupted_run_resumes_and_equals_an_uninterrupted_one(case, whole, tmp_path, cache_dir):
    killer, resumed_after = CASES[case]
    proc = run_cli([*ARGS, f"train.callbacks=[{killer}]"], cwd=tmp_path, cache=cache_dir)
    cut = tmp_path / "run"
    assert (cut / "checkpoints" / "last.ckpt").exists()
    if case.startswith("ctrlc"):
        # recorded and reported, without a traceback
        assert proc.returncode == 130, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr, proc.stderr[-3000:]
        # the folder to name: the default one is named by the time it was made, so the same command alone would not
        assert f"the same command with hydra.run.dir={cut.resolve()} resumes it" in proc.stderr, proc.stderr[-3000:]
        assert _results(cut)["status"] == "interrupted"
    else:
        assert proc.returncode == 3, f"the run should have been killed: {proc.stderr[-3000:]}"
        assert _results(cut)["status"] == "running"

    proc = run_cli(ARGS, cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming after step {resumed_after}" in " ".join(proc.stderr.split())
    res, ref = _results(cut), _results(whole)
    assert res["status"] == "ok" and res["train/steps_done"] == 8
    assert not (cut / "checkpoints").exists(), "checkpoints are dropped after success"
    # every result but wall-clock times equals the uninterrupted run's
    differ = {k for k in ref.keys() | res.keys() if not k.startswith("time/") and res.get(k) != ref.get(k)}
    assert not differ, {k: (res.get(k), ref.get(k)) for k in sorted(differ)}

    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)

    # the local metrics hold every step once, with the uninterrupted run's values
    assert [s for s, _ in _steps(cut)] == [s for s, _ in _steps(whole)]
    for (_, x), (_, y) in zip(_steps(cut), _steps(whole), strict=True):
        assert x == pytest.approx(y, rel=1e-5)

    assert "already complete" in run_cli(ARGS, cwd=tmp_path, cache=cache_dir).stderr


def test_a_resumed_run_continues_its_wandb_run(tmp_path, cache_dir):
    args = [*ARGS, "logger=wandb"]
    proc = run_cli([*args, "train.callbacks=[{_target_:killers.KillAt,step:5}]"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 3
    proc = run_cli(args, cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    ids = {p.name.rsplit("-", 1)[-1] for p in runs}
    assert len(runs) == 2 and len(ids) == 1, f"one W&B run id across the interruption, got {runs}"


def test_rerunning_a_sweep_skips_finished_jobs_and_reruns_changed_ones(tmp_path, cache_dir):
    sweep = ["-m", "experiment=smoke", "train.steps=2", "combiner=sum,sago", "hydra.sweep.dir=sweep"]
    assert run_cli(sweep, cwd=tmp_path, cache=cache_dir).returncode == 0
    first = {p.name: (p / "results.json").stat().st_mtime_ns for p in (tmp_path / "sweep").iterdir() if p.is_dir()}
    proc = run_cli(sweep, cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0 and proc.stderr.count("already complete") == 2
    again = {p.name: (p / "results.json").stat().st_mtime_ns for p in (tmp_path / "sweep").iterdir() if p.is_dir()}
    assert again == first, "finished jobs must not be rewritten"

    # a job whose config no longer matches its results (an edited config file, a new default) runs
    # again; the unchanged one is still skipped
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    stale = jobs[0] / "results.json"
    stale.write_text(stale.read_text().replace(json.loads(stale.read_text())["config_hash"], "0" * 16))
    proc = run_cli(sweep, cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0 and proc.stderr.count("already complete") == 1
    changed = {p.name: (p / "results.json").stat().st_mtime_ns for p in jobs}
    assert changed[jobs[0].name] != first[jobs[0].name] and changed[jobs[1].name] == first[jobs[1].name]
    assert json.loads(stale.read_text())["status"] == "ok"

    proc = run_cli([*sweep, "resume=false"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0 and "already complete" not in proc.stderr
    rerun = {p.name: (p / "results.json").stat().st_mtime_ns for p in jobs}
    assert all(rerun[k] != changed[k] for k in rerun), "resume=false reruns every job"


class _Payload:
    """Unpickling this opens (creates) ``path``: stands for any code a planted pickle could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_planted_checkpoint_does_not_run_code(tmp_path, cache_dir):
    args = ["experiment=smoke", "train.steps=2", "train.checkpoint_every=1", "hydra.run.dir=run"]
    proc = run_cli([*args, "train.callbacks=[{_target_:killers.KillAt,step:2}]"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.exists() and (ckpt.parent / "config_hash").exists()
    marker = tmp_path / "payload-ran"
    torch.save({"global_step": 1, "state_dict": {}, "x": _Payload(marker)}, ckpt)  # beside the run's own config_hash

    proc = run_cli(args, cwd=tmp_path, cache=cache_dir)
    assert not marker.exists(), "unpickling the planted checkpoint ran its payload"
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = " ".join(proc.stderr.split())
    assert "cannot resume from" in err and "resuming after" not in err
    res = _results(tmp_path / "run")
    assert res["status"] == "ok" and res["train/steps_done"] == 2


def test_the_hash_holds_the_global_batch_not_the_process_count(monkeypatch):
    """A run is its global batch (per-process batch × processes): 2 processes at batch 4 and 1 at
    batch 8 are the same run (a resume may change the process count), 2 at batch 4 and 1 at batch 4
    are not (the same stream position would mean other items). Under torchrun the processes are
    the launcher's, whatever trainer.devices says."""
    from conftest import job_config

    from unlearn.job import world_of
    from unlearn.resume import config_hash

    def h(*overrides):
        cfg = job_config(["trainer=fsdp", *overrides])
        return config_hash(cfg, world_of(cfg))

    assert h("trainer.devices=2", "train.batch_size=4") == h("trainer.devices=1", "train.batch_size=8")
    assert h("trainer.devices=2", "train.batch_size=4") != h("trainer.devices=1", "train.batch_size=4")
    assert h("trainer.devices=2", "train.batch_size=4") != h("trainer=ddp", "trainer.devices=1", "train.batch_size=8")
    for k, v in {"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert world_of(job_config(["trainer=fsdp"])) == 4
    assert h("trainer.devices=2", "train.batch_size=2") == h("trainer.devices=8", "train.batch_size=2")
    assert h("train.batch_size=2") != h("train.batch_size=4")


def test_where_the_cache_lives_is_not_part_of_the_hash():
    # paths.cache_dir is interpolated into smoothing.provider.cache_dir and model.spec.cache_dir: moving
    # the cache (UNLEARN_CACHE on another node) must not make finished jobs look unfinished
    from conftest import job_config

    from unlearn.resume import config_hash

    def h(*overrides):
        return config_hash(job_config(["model=smollm2_135m", "smoothing/provider=retrieval", *overrides]), 1)

    here, there = h("paths.cache_dir=/a"), h("paths.cache_dir=/b")
    cfg = job_config(["model=smollm2_135m", "smoothing/provider=retrieval", "paths.cache_dir=/b"])
    assert cfg.model.spec.cache_dir == cfg.smoothing.provider.cache_dir == "/b"
    assert here == there
    assert h("paths.cache_dir=/a", "smoothing.rate=0.5") != here  # the hash still sees the rest


def test_with_accumulation_each_optimizer_step_is_one_metrics_row_across_a_resume(tmp_path, cache_dir):
    """With train.accumulate=2 Lightning counts micro-batches and logged the last step's values
    again after each one, under that count, while a resume cuts the file at the checkpoint's
    optimizer step: rows 1 = 2, 3 = 4, ..., and 8-16 lost after a resume. Each optimizer step is
    now one row, numbered by the step, as without accumulation."""
    args = [*ARGS, "train.accumulate=2"]
    whole_dir, cut_dir = tmp_path / "whole", tmp_path / "cut"
    whole_dir.mkdir(), cut_dir.mkdir()
    assert run_cli(args, cwd=whole_dir, cache=cache_dir).returncode == 0
    proc = run_cli([*args, "train.callbacks=[{_target_:killers.KillAt,step:5}]"], cwd=cut_dir, cache=cache_dir)
    assert proc.returncode == 3, proc.stderr[-3000:]
    proc = run_cli(args, cwd=cut_dir, cache=cache_dir)
    assert proc.returncode == 0 and "resuming after step 4" in " ".join(proc.stderr.split()), proc.stderr[-3000:]
    whole, cut = _steps(whole_dir / "run"), _steps(cut_dir / "run")
    assert [s for s, _ in whole] == [s for s, _ in cut] == list(range(8))
    for (_, x), (_, y) in zip(cut, whole, strict=True):
        assert x == pytest.approx(y, rel=1e-5)


def test_settings_that_only_change_how_a_run_is_watched_or_fed_leave_its_hash():
    """Rerunning a named sweep with another progress interval, thread count or number of loader
    workers must find its finished jobs (a changed hash reruns each and drops its checkpoints)."""
    from conftest import job_config

    from unlearn.resume import config_hash

    def h(*overrides):
        return config_hash(job_config(["experiment=smoke", *overrides]), 1)

    base = h()
    for o in ("trainer.progress_every=3", "trainer.threads=1", "trainer.num_workers=2"):
        assert h(o) == base, o
    assert h("train.steps=3") != base


def test_a_checkpoints_step_is_read_without_reading_its_tensors(tmp_path):
    """A resume asks for the checkpoint's step three times before Lightning loads it; at paper scale
    the file (weights and AdamW state) is ~100 GB, and each read of it took that much memory."""
    import subprocess
    import sys

    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 7, "state_dict": {"w": torch.ones(64, 2**20)}}, ckpt)  # 256 MiB
    # VmHWM, the peak of this process's memory since its exec (ru_maxrss would carry pytest's own peak
    # over the fork into the child)
    code = (
        "from pathlib import Path; import torch\n"
        "from unlearn.resume import checkpoint_step\n"
        "def peak():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024\n"
        "before = peak()\n"
        f"assert checkpoint_step(Path({str(ckpt)!r})) == 7\n"
        "print(peak() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert float(out.stdout.strip().splitlines()[-1]) < 32, out.stdout  # MiB more at peak, of 256
