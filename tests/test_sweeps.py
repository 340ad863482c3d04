"""Sweeps: a failed or diverged job is recorded and the sweep goes on; the local parallel launcher
and the Optuna sweeper run real jobs; the report reads the result."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def _jobs(root):
    return {p.name: json.loads((p / "results.json").read_text()) for p in sorted(root.iterdir()) if (p / "results.json").exists()}


def test_failed_and_diverged_jobs_are_recorded_and_the_sweep_goes_on(tmp_path, cache_dir):
    args = ["-m", "experiment=smoke", "train.steps=2", "optim.lr=-1,1e-3", "train.max_abs_loss=1e-3,1e4", "sweep=robust"]
    proc = run_cli(args, cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(tmp_path / "multirun" / "robust")
    assert len(jobs) == 4
    by = {(k.split("optim.lr=")[1].split(",")[0], k.split("train.max_abs_loss=")[1].split(",")[0]): v for k, v in jobs.items()}
    assert by[("-1", "0.001")]["status"] == "failed" and "optim.lr" in by[("-1", "0.001")]["reason"]
    assert by[("0.001", "0.001")]["status"] == "diverged" and "limit" in by[("0.001", "0.001")]["reason"]
    assert by[("0.001", "10000.0")]["status"] == "ok"
    from unlearn.report.__main__ import main

    assert main([str(tmp_path / "multirun" / "robust")]) == 0
    md = (tmp_path / "multirun" / "robust" / "report" / "report.md").read_text()
    assert "Runs that did not finish" in md and "diverged" in md and "failed" in md


def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path, cache_dir):
    proc = run_cli(["-m", "launcher=joblib", "experiment=smoke", "train.steps=2", "combiner=sum,sago", "sweep=par"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib" in proc.stdout + proc.stderr
    jobs = _jobs(tmp_path / "multirun" / "par")
    assert sorted(jobs) == ["0_combiner=sum,experiment=smoke,train.steps=2", "1_combiner=sago,experiment=smoke,train.steps=2"]
    assert all(j["status"] == "ok" for j in jobs.values())


def test_optuna_searches_rate_and_lr_on_two_objectives(tmp_path, cache_dir):
    proc = run_cli(["-m", "sweeper=optuna", "hydra.sweeper.n_trials=2", "experiment=smoke", "train.steps=2", "sweep=search"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "multirun" / "search"
    jobs = _jobs(root)
    assert len(jobs) == 2 and all(j["status"] == "ok" for j in jobs.values())
    rates = {json.loads((root / k / "config.json").read_text())["smoothing"]["rate"] for k in jobs}
    assert len(rates) == 2 and all(-1 <= r <= 1 for r in rates)
    best = (root / "optimization_results.yaml").read_text()
    assert "solutions" in best or "best" in best
