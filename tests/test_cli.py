"""End-to-end runs of `python -m unlearn` on the shrunken `experiment=smoke` config."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import pytest
from conftest import run_cli

from unlearn.loggers import read_metrics

pytestmark = pytest.mark.slow


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cache_dir):
    work = tmp_path_factory.mktemp("smoke")
    proc = run_cli(["experiment=smoke", "hydra.run.dir=run"], cwd=work, cache=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "run", proc


def test_smoke_run_writes_config_provenance_and_results(smoke_run):
    run, proc = smoke_run
    res = _results(run)
    assert res["status"] == "ok" and res["reason"] is None
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["steps"] == 10 and cfg["task"] == "unlearn"
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["seed"] == 0
    assert {"commit", "dirty"} <= set(prov["git"])
    assert prov["versions"]["torch"] and prov["versions"]["transformers"]
    assert prov["device"]["cuda"] in (True, False)
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert prov["malloc_tuned"] is glibc  # unlearn.utils.malloc, before any tensor
    for role in ("target", "oracle", "unlearned"):
        rec = json.loads((run / f"eval_{role}.json").read_text())
        assert len(rec["arrays"]["forget_truth_ratio"]) == 24
    assert "forget_rouge" in proc.stdout  # the results table


def test_smoke_run_unlearns_the_forget_set(smoke_run):
    res = _results(smoke_run[0])
    assert res["target/toy/forget_prob"] > 0.3, "the fine-tuned target should know the forget set"
    assert res["eval/toy/forget_prob"] < 0.75 * res["target/toy/forget_prob"]
    assert res["eval/toy/forget_rouge"] < res["target/toy/forget_rouge"]
    assert res["eval/toy/retain_prob"] > 0.75 * res["target/toy/retain_prob"], "retain knowledge should mostly stay"
    assert 0 <= res["eval/toy/forget_quality"] <= 1
    assert res["train/steps_done"] == 10


def test_smoke_run_logs_every_step_locally(smoke_run):
    rows = [r for r in read_metrics(smoke_run[0] / "metrics.jsonl") if "train/loss/forget" in r]
    assert [r["step"] for r in rows] == list(range(10))
    for key in (
        "train/loss/retain",
        "train/grad/norm_forget",
        "train/grad/norm_retain",
        "train/grad/cos_forget_retain",
        "train/grad/cos_update_retain",
        "train/grad/conflict_frac",
        "train/lr",
    ):
        assert key in rows[0], key
    assert rows[-1]["train/loss/forget"] < rows[0]["train/loss/forget"], "GA's loss (-NLL) must go down"


def test_second_run_reuses_the_cached_target_and_oracle(smoke_run, tmp_path, cache_dir):
    start = time.perf_counter()
    # train.epochs replaces train.steps: 0.5 passes over the 24 forget rows at batch 4 -> 3 steps
    proc = run_cli(
        ["experiment=smoke", "hydra.run.dir=run", "train.epochs=0.5", "train.batch_size=4"],
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuning the" not in proc.stderr and "cached" in proc.stderr
    res = _results(tmp_path / "run")
    assert res["status"] == "ok" and res["train/steps_done"] == 3
    assert time.perf_counter() - start < 120


def test_a_changed_recipe_is_not_served_from_the_cache(smoke_run, tmp_path, cache_dir):
    proc = run_cli(
        [
            "experiment=smoke",
            "hydra.run.dir=run",
            "train.steps=1",
            "benchmark.finetune.epochs=2",
            "benchmark.oracle.finetune_on=null",
        ],
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuning the target model" in proc.stderr


def test_multirun_gives_every_job_its_own_directory(smoke_run, tmp_path, cache_dir):
    proc = run_cli(
        ["-m", "experiment=smoke", "combiner=sum,pcgrad,sago", "train.steps=3", "hydra.sweep.dir=sweep"],
        cwd=tmp_path,
        cache=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [j.name for j in jobs] == [
        "0_simnpo+nll+sum_experiment=smoke,train.steps=3",
        "1_simnpo+nll+pcgrad_experiment=smoke,train.steps=3",
        "2_simnpo+nll+sago_experiment=smoke,train.steps=3",
    ]
    targets = set()
    for j in jobs:
        res = _results(j)
        assert res["status"] == "ok"
        targets.add(json.loads((j / "config.json").read_text())["combiner"]["_target_"])
    assert targets == {"unlearn.combiners.Sum", "unlearn.combiners.PCGrad", "unlearn.combiners.SAGO"}
    assert not (tmp_path / "outputs").exists(), "a sweep must write only under its sweep dir"


def test_bad_value_fails_fast_with_the_key_named(tmp_path, cache_dir):
    proc = run_cli(["method=sga", "optim.lr=-1", "hydra.run.dir=run"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 2
    assert "optim.lr must be a number > 0 (finite), got -1" in proc.stderr
    assert "fine-tuning" not in proc.stderr and "Traceback" not in proc.stderr
    assert _results(tmp_path / "run")["status"] == "failed"
    # the failed job's config is resolved, so a report files it under its own cell (rate -1)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["smoothing"]["rate"] == -1.0 and config["optim"]["lr"] == -1


def test_unknown_option_lists_the_available_ones(tmp_path, cache_dir):
    proc = run_cli(["combiner=pcgard"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode != 0
    assert "combiner" in proc.stderr and "pcgrad" in proc.stderr


def test_wandb_logs_offline_into_the_run_directory(smoke_run, tmp_path, cache_dir):
    proc = run_cli(
        ["experiment=smoke", "logger=wandb", "train.steps=2", "hydra.run.dir=run"], cwd=tmp_path, cache=cache_dir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
