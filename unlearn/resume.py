"""Skipping finished jobs and resuming interrupted ones.

A job is identified by the hash of its resolved config, minus keys that cannot change its results
(logging, progress bars, paths, checkpoint cadence). Re-running a job in the same directory (the
same sweep: `sweep=NAME`, or the same `hydra.run.dir`) then

- skips it when ``results.json`` there is complete (status ``ok`` or ``diverged``) for that hash;
- resumes it from ``checkpoints/last.ckpt`` when the checkpoint was written for that hash (and
  loads with ``weights_only=True``: a checkpoint is a pickle, and only tensors and plain
  containers are let through, so a planted one cannot run code);
- starts it afresh otherwise (a checkpoint of another config is removed).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from unlearn.cache import digest
from unlearn.rundir import read_json
from unlearn.utils.progress import say

#: keys that do not influence a job's results
IGNORED = (
    "group",
    "logger",
    "paths",
    "resume",
    "sweep",
    "objective_metric",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "trainer.progress_every",
    "trainer.num_workers",  # data-loading processes; the batches are the same
    "trainer.threads",  # torch threads: the same run, to the order of a float sum
    "train.checkpoint_every",
    "train.keep_checkpoint",
    "train.callbacks",
    "plan",
)
COMPLETE = ("ok", "collapsed", "diverged")
CKPT_DIR = "checkpoints"


def config_hash(cfg: DictConfig, world: int) -> str:
    """The job's identity. ``world``: the processes that split the training stream (the launcher's
    under torchrun/srun, else ``trainer.devices × num_nodes`` of a data-parallel trainer, else 1).

    What a step sees is the *global* batch, ``train.batch_size × world``, and the stream position
    a resumed run restarts from is counted in global items, so the hash holds that product in
    place of the per-process batch and the process count: a run checkpointed on 8 processes at
    batch 2 resumes on 4 at batch 4 (the same steps on the same items), while a relaunch on 4 at
    batch 2, a different run, is not taken for the same one."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    train, trainer = data.get("train"), data.get("trainer")
    if isinstance(train, dict) and isinstance(train.get("batch_size"), int) and isinstance(trainer, dict):
        data["global_batch"] = train.pop("batch_size") * world
        trainer.pop("devices", None)
        trainer.pop("num_nodes", None)
    for key in IGNORED:
        node: Any = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.get(p, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(leaf, None)
    return digest(_without_caches(data))


def _without_caches(node: Any) -> Any:
    """``node`` without any ``cache_dir`` key at any depth (``paths.cache_dir`` interpolated into
    ``smoothing.provider`` or ``model.spec``): where a cache lives never changes a result, and a sweep
    rerun with another ``UNLEARN_CACHE`` (a cluster node's scratch disk) must find its finished jobs."""
    if isinstance(node, dict):
        return {k: _without_caches(v) for k, v in node.items() if k != "cache_dir"}
    if isinstance(node, list):
        return [_without_caches(v) for v in node]
    return node


def completed(run_dir: Path, h: str) -> Mapping[str, Any] | None:
    """The results of a finished run of this config in ``run_dir``, if there is one."""
    path = run_dir / "results.json"
    if not path.exists():
        return None
    try:
        res = read_json(path)
    except ValueError:
        return None  # a torn or foreign file: run again
    return res if res.get("config_hash") == h and res.get("status") in COMPLETE else None


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CKPT_DIR


def resumable(run_dir: Path, h: str) -> Path | None:
    """``last.ckpt`` of an interrupted run of this config; stale checkpoints are removed, and so
    is one that does not load as plain tensors and containers (torn by a kill, or planted)."""
    d = checkpoint_dir(run_dir)
    ckpt, stamp = d / "last.ckpt", d / "config_hash"
    if not ckpt.exists():
        return None
    if stamp.exists() and stamp.read_text().strip() == h:
        try:
            checkpoint_step(ckpt)
            return ckpt
        except Exception as e:  # noqa: BLE001  (any unreadable checkpoint: start afresh)
            say(
                f"cannot resume from {ckpt} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); starting "
                "afresh"
            )
    shutil.rmtree(d, ignore_errors=True)
    return None


def stamp_checkpoints(run_dir: Path, h: str) -> Path:
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config_hash").write_text(h + "\n")
    return d


def drop_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)


def checkpoint_step(ckpt: Path | None) -> int:
    """Optimizer steps done when ``ckpt`` was written (0 for a fresh start).

    Loaded with ``weights_only=True``: unpickling a checkpoint may otherwise call anything, so a
    file planted in the run folder would run code. Lightning's own load of it is as restricted
    (:func:`unlearn.training.fit.fit` passes ``weights_only=True``). Memory-mapped: no tensor is
    read for the one number (a 7B model's checkpoint with AdamW state is ~100 GB, and a resume
    asks for its step three times before Lightning loads it)."""
    if ckpt is None:
        return 0
    import torch

    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of this job: the interrupted run's when resuming (so W&B continues one run
    instead of opening a second one of the same name), else a new one, kept beside the checkpoints."""
    path = checkpoint_dir(run_dir) / "wandb_id"
    if resuming and path.exists():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id
