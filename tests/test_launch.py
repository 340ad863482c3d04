"""Jobs started by the ecosystem's launchers: ``torchrun --nproc-per-node=2 -m unlearn trainer=ddp|fsdp``
runs one job across the launched processes, rank 0 alone writes the run directory, and the
results equal one process's on the union of the ranks' batches. ``srun`` is read from SLURM's
environment the same way (tested on the environment here; scripts/slurm_local_check.sh runs
srun on a one-node SLURM)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from unlearn.loggers import read_metrics

SMOKE = ["experiment=smoke", "hydra.run.dir=run"]


def _env(cache: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "UNLEARN_CACHE": str(cache),
        "WANDB_MODE": "offline",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "SLURM_NTASKS", "SLURM_PROCID"):
        env.pop(k, None)
    return env


def _results(d: Path) -> dict:
    return json.loads((d / "run" / "results.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, cache_dir):
    """One process at twice the per-process batch: what two launched ranks must equal."""
    cwd = tmp_path_factory.mktemp("one")
    r = subprocess.run(
        [sys.executable, "-m", "unlearn", *SMOKE, "train.batch_size=16"],
        cwd=cwd,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return _results(cwd)


# cold: an empty cache, so rank 0 fine-tunes the target model in one process while rank 1 waits
# for it (its step must not wait for rank 1 in a collective: that deadlocked before)
@pytest.mark.slow
@pytest.mark.parametrize("trainer, cache", [("ddp", "warm"), ("fsdp", "cold")])
def test_torchrun_two_processes_one_run_directory_same_results(trainer, cache, one_process, tmp_path, cache_dir):
    cold = tmp_path.parent / f"{tmp_path.name}-cache"
    cache_dir = cold if cache == "cold" else cache_dir
    with socket.socket() as sock:  # a free port for the rendezvous (torchrun's own default may be taken)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        f"--master-port={port}",
        "-m",
        "unlearn",
    ]
    r = subprocess.run(
        [*torchrun, *SMOKE, f"trainer={trainer}"],
        cwd=tmp_path,
        env=_env(cache_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"], "one run directory, nothing else"
    assert "Starting with 2 processes" not in r.stderr, "the launched processes train; nothing is spawned"
    res = _results(tmp_path)
    assert res["status"] == "ok" and res["train/steps_done"] == 10
    steps = [row["step"] for row in read_metrics(tmp_path / "run" / "metrics.jsonl") if row.get("phase") == "unlearn"]
    assert steps == list(range(10)), "one metrics row per step: only rank 0 logs"
    evaluated = 3 if cache == "cold" else 1  # cold: the oracle and the target too, then cached
    assert (r.stdout + r.stderr).count("eval toy: holdout") == evaluated, "rank 0 alone evaluates"
    built = " ".join((r.stdout + r.stderr).split()).count("fine-tuning the target model")
    assert built == (1 if cache == "cold" else 0), "the target is fine-tuned once, by one rank"
    numbers = {k: v for k, v in one_process.items() if isinstance(v, float) and not k.startswith("time/")}
    assert numbers and res.keys() >= numbers.keys()

    # 10 AdamW steps on differently ordered reductions: the metrics agree to ~1e-4 (1e-3 allowed).
    # A multiple-choice accuracy moves in whole questions, and SAGO's sign gate can turn a rounding
    # difference into one flipped answer (seen: general_mc_acc 37/75 against 38/75), so it may differ
    # by one question of the toy's 75 general or 96 retain ones, not two.
    def close(k: str, a: float, b: float) -> bool:
        if k.endswith("mc_acc"):
            return abs(a - b) <= 1 / 75 + 1e-9
        return a == pytest.approx(b, rel=1e-3, abs=1e-4)

    differ = {k: (res[k], v) for k, v in numbers.items() if not close(k, res[k], v)}
    assert not differ, differ


def _fake(monkeypatch, **env):
    for k in (
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "TORCHELASTIC_RUN_ID",
        "SLURM_NTASKS",
        "SLURM_PROCID",
        "SLURM_LOCALID",
        "SLURM_NTASKS_PER_NODE",
        "SLURM_JOB_NAME",
    ):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def test_the_launchers_environments_are_read(monkeypatch):
    from unlearn.training.launch import Launch, launched

    _fake(monkeypatch)
    assert launched() is None
    _fake(
        monkeypatch,
        RANK="3",
        WORLD_SIZE="4",
        LOCAL_RANK="1",
        LOCAL_WORLD_SIZE="2",
        GROUP_RANK="1",
        TORCHELASTIC_RUN_ID="x",
    )
    got = launched()
    assert got == Launch(rank=3, world=4, local_rank=1, local_world=2) and got.nodes == 2
    _fake(
        monkeypatch,
        SLURM_NTASKS="8",
        SLURM_PROCID="5",
        SLURM_LOCALID="1",
        SLURM_NTASKS_PER_NODE="4(x2)",
        SLURM_NODEID="1",
        SLURM_JOB_NAME="train",
        SLURM_NODELIST="n[1-2]",
        SLURM_JOB_ID="77",
    )
    assert launched() == Launch(rank=5, world=8, local_rank=1, local_world=4)
    _fake(
        monkeypatch,
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        GROUP_RANK="0",
        TORCHELASTIC_RUN_ID="x",
    )
    assert launched() is None, "one launched process is an ordinary job"


def test_launched_processes_need_a_data_parallel_trainer(monkeypatch, tmp_path):
    from conftest import job_config

    from unlearn.config import ConfigError
    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    _fake(
        monkeypatch,
        RANK="0",
        WORLD_SIZE="2",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="2",
        GROUP_RANK="0",
        TORCHELASTIC_RUN_ID="x",
    )
    with pytest.raises(
        ConfigError,
        match=r"trainer.strategy: this job was started as 2 processes \(torchrun or srun\)"
        r".*add trainer=ddp or trainer=fsdp",
    ):
        build_job(job_config([f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run"))
    s = build_job(
        job_config(["trainer=fsdp", "trainer.devices=8", f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run")
    )
    assert s.loop.world_size == 2 and s.loop.devices == 2, "the launched processes decide, not trainer.devices"


def test_a_rank_that_is_not_zero_writes_nothing(tmp_path):
    from unlearn.rundir import RunDir
    from unlearn.training.launch import drop_stray_dir

    quiet = RunDir(tmp_path / "rank1", writes=False)
    quiet.status("running")
    quiet.write_provenance(0)
    assert not (tmp_path / "rank1").exists() and quiet.results["status"] == "running"
    own = tmp_path / "own"
    (own / ".hydra").mkdir(parents=True)
    (own / "__main__.log").write_text("")
    drop_stray_dir(own, tmp_path / "rank0")
    assert not own.exists()
    (own / ".hydra").mkdir(parents=True)
    (own / "results.json").write_text("{}")  # something of the user's: kept
    drop_stray_dir(own, tmp_path / "rank0")
    assert own.exists()


def test_a_failed_rank_ends_the_others_under_srun():
    """Rank 0 evaluates alone before training: when it stops there, SLURM must end the other tasks,
    which would otherwise wait at a collective for the process group's 6 h timeout (SLURM's default
    keeps them; torchrun ends them by itself). The sbatch script's srun and launcher=slurm's
    submitit srun both ask for it."""
    from conftest import compose

    sbatch = (REPO / "scripts" / "slurm_fsdp.sbatch").read_text()
    assert any(line.startswith("srun --kill-on-bad-exit=1 ") for line in sbatch.splitlines())
    cfg = compose(["launcher=slurm"])
    assert "export SLURM_KILL_BAD_EXIT=1" in list(cfg.hydra.launcher.setup)
