"""Interrupted jobs resume from their last checkpoint and end exactly where an uninterrupted run
ends; finished jobs are skipped when the same sweep runs again."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from unlearn.loggers import read_metrics

pytestmark = pytest.mark.slow

# SAGO with an EMA of g_r: the EMA buffer is state beyond weights and optimizer, so an exact
# match also shows it is checkpointed.
ARGS = ["experiment=smoke", "train.steps=8", "train.checkpoint_every=2", "train.retain_ema=0.9", "save_model=true", "hydra.run.dir=run"]


def _weights(run):
    return load_file(str(run / "model" / "model.safetensors"))


def test_a_killed_run_resumes_and_matches_an_uninterrupted_one(tmp_path, cache_dir):
    whole = tmp_path / "whole"
    whole.mkdir()
    proc = run_cli(ARGS, cwd=whole, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]

    cut = tmp_path / "cut"
    cut.mkdir()
    proc = run_cli([*ARGS, "train.callbacks=[{_target_:killers.KillAt,step:5}]"], cwd=cut, cache=cache_dir)
    assert proc.returncode == 3, "the run should have been killed at step 5"
    assert (cut / "run" / "checkpoints" / "last.ckpt").exists()
    assert json.loads((cut / "run" / "results.json").read_text())["status"] == "running"

    proc = run_cli(ARGS, cwd=cut, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming after step 4" in proc.stderr
    res = json.loads((cut / "run" / "results.json").read_text())
    assert res["status"] == "ok" and res["train/steps_done"] == 8
    assert not (cut / "run" / "checkpoints").exists(), "checkpoints are dropped after success"

    a, b = _weights(whole / "run"), _weights(cut / "run")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)

    # the local metrics hold every step once, with the uninterrupted run's values
    def steps(run):
        return [(r["step"], r["train/loss/forget"]) for r in read_metrics(run / "metrics.jsonl") if r["phase"] == "unlearn" and "train/loss/forget" in r]

    assert [s for s, _ in steps(cut / "run")] == [s for s, _ in steps(whole / "run")]
    for (_, x), (_, y) in zip(steps(cut / "run"), steps(whole / "run")):
        assert x == pytest.approx(y, rel=1e-5)


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
