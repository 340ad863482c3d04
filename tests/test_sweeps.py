"""Sweeps: each job's W&B group, name and tags; a failed or diverged job is recorded and the sweep
goes on; the local parallel launcher and the Optuna sweeper run real jobs; the report reads the
result."""

from __future__ import annotations

import json

import pytest
from conftest import compose, run_cli


def _meta(overrides, monkeypatch, tmp_path, multirun=True):
    """``job_meta`` of a job composed from ``overrides``, as Hydra hands it to the app."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from unlearn.__main__ import job_meta

    cfg = compose(overrides)
    with open_dict(cfg):
        cfg.hydra.mode = "MULTIRUN" if multirun else "RUN"
        cfg.hydra.runtime.output_dir = str(tmp_path / "job")
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # restored after the test
    HydraConfig.instance().set_config(cfg)
    return job_meta(cfg)


@pytest.mark.parametrize("sweep, group", [("rate_grid", "rate_grid"), ("exp/rate", "exp_rate")])
def test_a_sweep_job_is_grouped_by_its_sweep_named_by_its_overrides_and_tagged(monkeypatch, tmp_path, sweep, group):
    meta = _meta(
        ["method=npo", "combiner=pcgrad", "benchmark=toy", "smoothing.rate=0.5", "seed=1", f"sweep={sweep}"],
        monkeypatch,
        tmp_path,
    )
    assert meta["multirun"] and meta["group"] == group
    # the sweep name is the group, not part of the run name; the options that ran lead
    # (unlearn/labels.py), then the other overrides, sorted
    assert meta["name"] == "npo+nll+pcgrad-toy seed=1,smoothing.rate=0.5"
    assert {
        "method:npo+nll",
        "combiner:pcgrad",
        "forget:npo",
        "retain:nll",
        "preset:npo",
        "benchmark:toy",
        "model:tiny",
    } <= set(meta["tags"])
    assert meta["overrides"][-1] == f"sweep={sweep}"


def test_group_overrides_the_sweep_folder_and_a_single_run_has_no_group_by_default(monkeypatch, tmp_path):
    assert (
        _meta(["method=sga", "sweep=rate_grid", "group=paper-table2"], monkeypatch, tmp_path)["group"] == "paper-table2"
    )
    single = _meta(["method=sga", "combiner=sago"], monkeypatch, tmp_path, multirun=False)
    assert single["group"] is None and not single["multirun"]
    assert single["name"] == "ga+none+sago-toy" and "combiner:sago" in single["tags"]


def _jobs(root):
    return {
        p.name: json.loads((p / "results.json").read_text())
        for p in sorted(root.iterdir())
        if (p / "results.json").exists()
    }


@pytest.mark.slow
def test_failed_and_diverged_jobs_are_recorded_and_the_sweep_goes_on(tmp_path, cache_dir):
    args = [
        "-m",
        "experiment=smoke",
        "train.steps=2",
        "optim.lr=-1,1e-3",
        "train.max_abs_loss=1e-3,1e4",
        "sweep=robust",
    ]
    proc = run_cli(args, cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = _jobs(tmp_path / "multirun" / "robust")
    assert len(jobs) == 4
    by = {
        (k.split("optim.lr=")[1].split(",")[0], k.split("train.max_abs_loss=")[1].split(",")[0]): v
        for k, v in jobs.items()
    }
    assert by[("-1", "0.001")]["status"] == "failed" and "optim.lr" in by[("-1", "0.001")]["reason"]
    assert by[("0.001", "0.001")]["status"] == "diverged" and "limit" in by[("0.001", "0.001")]["reason"]
    assert by[("0.001", "10000.0")]["status"] == "ok"
    from unlearn.report.__main__ import main

    assert main([str(tmp_path / "multirun" / "robust")]) == 0
    md = (tmp_path / "multirun" / "robust" / "report" / "report.md").read_text()
    assert "Runs that did not finish" in md and "diverged" in md and "failed" in md


@pytest.mark.slow
@pytest.mark.parametrize(
    "launcher,banner",
    [
        ("joblib", "Joblib"),  # local parallel processes
        ("submitit_local", "Submitit 'local'"),  # the SLURM launcher's job packaging, run on this machine
    ],
)
def test_launchers_run_every_job_into_its_own_directory(tmp_path, cache_dir, launcher, banner):
    proc = run_cli(
        ["-m", f"launcher={launcher}", "experiment=smoke", "train.steps=2", "combiner=sum,sago", "sweep=par"],
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert banner in proc.stdout + proc.stderr
    jobs = _jobs(tmp_path / "multirun" / "par")
    assert sorted(jobs) == [
        "0_simnpo+nll+sum_experiment=smoke,train.steps=2",
        "1_simnpo+nll+sago_experiment=smoke,train.steps=2",
    ]
    assert all(j["status"] == "ok" for j in jobs.values())
    if launcher == "submitit_local":
        assert list((tmp_path / "multirun" / "par" / ".submitit").iterdir()), "submitit wrote no job folders"


@pytest.mark.slow
def test_optuna_searches_rate_and_lr_on_two_objectives(tmp_path, cache_dir):
    proc = run_cli(
        ["-m", "sweeper=optuna", "hydra.sweeper.n_trials=2", "experiment=smoke", "train.steps=2", "sweep=search"],
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "multirun" / "search"
    jobs = _jobs(root)
    assert len(jobs) == 2 and all(j["status"] == "ok" for j in jobs.values())
    rates = {json.loads((root / k / "config.json").read_text())["smoothing"]["rate"] for k in jobs}
    assert len(rates) == 2 and all(-1 <= r <= 1 for r in rates)
    best = (root / "optimization_results.yaml").read_text()
    assert "solutions" in best or "best" in best


def test_a_diverged_trial_gives_the_sweeper_nan_even_when_it_was_evaluated():
    """Harry Potter's evaluator scores a diverged run (its last finite weights), and those numbers
    went to Optuna as a real trial; docs/sweeps.md promises a failed trial (NaN) for it."""
    from omegaconf import OmegaConf

    from unlearn.__main__ import _sweep_objective

    cfg = OmegaConf.create({"objective_metric": ["eval/hp/bleu", "eval/hp/ppl"]})
    values = {"eval/hp/bleu": 0.5, "eval/hp/ppl": 12.0}
    assert _sweep_objective(cfg, {"status": "ok", **values}) == [0.5, 12.0]
    assert _sweep_objective(cfg, {"status": "collapsed", **values}) == [0.5, 12.0]  # a real, bad result
    diverged = _sweep_objective(cfg, {"status": "diverged", **values})
    assert len(diverged) == 2 and all(v != v for v in diverged)


def test_a_finished_job_under_another_number_of_its_sweep_is_not_run_again(tmp_path):
    """A sweep run again with more values numbers its jobs anew (lr=2e-3 was job 1, is job 2 once
    seed=0,1 is swept too): the job finds its finished run under the old number. Outside a sweep
    (or under another name) nothing is taken from a neighbour."""
    from conftest import job_config

    from unlearn.__main__ import _finished
    from unlearn.job import world_of
    from unlearn.resume import config_hash
    from unlearn.rundir import write_json

    cfg = job_config(["experiment=smoke", "optim.lr=2e-3"])
    h = config_hash(cfg, world_of(cfg))
    sweep = tmp_path / "multirun" / "s1"
    old, new = sweep / "1_simnpo+nll+sago_optim.lr=0.002", sweep / "2_simnpo+nll+sago_optim.lr=0.002"
    write_json(old / "results.json", {"status": "ok", "config_hash": h, "eval/toy/forget_prob": 0.1})
    new.mkdir()
    done, where = _finished(new, cfg, multirun=True)
    assert where == str(old) and done["eval/toy/forget_prob"] == 0.1
    assert _finished(new, cfg, multirun=False) is None
    other = sweep / "3_simnpo+nll+sago_optim.lr=0.004"
    other.mkdir()
    assert _finished(other, cfg, multirun=True) is None
    write_json(old / "results.json", {"status": "ok", "config_hash": "another job", "eval/toy/forget_prob": 0.1})
    assert _finished(new, cfg, multirun=True) is None
