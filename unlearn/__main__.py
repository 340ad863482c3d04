"""``python -m unlearn [overrides]``: one experiment, or a sweep with ``-m``."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from unlearn.config import ConfigError
from unlearn.hydra_setup import conf_dir, sweep_group
from unlearn.labels import wandb_name, wandb_tags
from unlearn.resume import completed, config_hash
from unlearn.rules import is_number
from unlearn.rundir import RunDir, write_json
from unlearn.training.launch import from_rank0


def job_meta(cfg: DictConfig) -> dict[str, Any]:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    choices = hc.runtime.choices  # the options that ran, whichever preset or override chose them
    name = wandb_name(choices, cfg.benchmark.name, hc.job.override_dirname)
    tags = wandb_tags(choices, cfg.method.name, cfg.benchmark.name, cfg.model.name)
    group = cfg.get("group") or (sweep_group(hc.sweep.dir) if multirun else None)
    return {
        "name": name,
        "group": group,
        "tags": tags,
        "multirun": multirun,
        "output_dir": hc.runtime.output_dir,
        "overrides": list(hc.overrides.task),
    }


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def app(cfg: DictConfig) -> Any:
    from unlearn.pipeline import run
    from unlearn.plan.check import check_fits
    from unlearn.utils.malloc import keep_freed_memory

    meta = job_meta(cfg)
    meta["malloc_tuned"] = keep_freed_memory()  # before any tensor: see unlearn.utils.malloc
    path, rank0 = _launched_run_dir(Path(meta["output_dir"]))
    found = from_rank0(_finished(path, cfg, meta["multirun"]) if cfg.get("resume", True) and rank0 else None)
    if found is not None:
        done, where = found
        if rank0:
            print(
                f"[unlearn] already complete in {where} (status {done['status']}); skipping (resume=false runs it "
                "again)",
                file=sys.stderr,
            )
        return _sweep_objective(cfg, done)
    run_dir = RunDir(path, writes=rank0)
    try:
        if rank0:
            write_json(run_dir.file("config.json"), _container(cfg))  # resolved whenever build_job can pass
        job = start(cfg, run_dir, meta)
        check_fits(cfg, job.device)  # on a GPU: stop before loading weights that cannot fit
        results = run(job, meta)
    except ConfigError as e:
        run_dir.status("failed", f"{e.kind}: {e}")
        print(f"{e.kind}: {e}", file=sys.stderr)
        if meta["multirun"]:
            return _sweep_objective(cfg, {})
        sys.exit(2)
    except KeyboardInterrupt:  # Ctrl-C: recorded, the checkpoints kept for the next run to resume
        run_dir.status("interrupted", "KeyboardInterrupt (Ctrl-C)")
        # the default folders are named by the time they were made, so the same command alone starts a new one
        how = f"sweep={cfg.get('sweep')}" if meta["multirun"] else f"hydra.run.dir={run_dir.path}"
        print(
            f"[unlearn] interrupted; the same command with {how} resumes it from its last checkpoint", file=sys.stderr
        )
        sys.exit(130)
    except Exception as e:  # a failed job is recorded; in a sweep the others go on
        (run_dir.file("traceback.txt")).write_text(traceback.format_exc())
        run_dir.status("failed", f"{type(e).__name__}: {e}")
        if not meta["multirun"]:
            raise
        print(f"[unlearn] job failed ({type(e).__name__}: {e}); see {run_dir.file('traceback.txt')}", file=sys.stderr)
        return _sweep_objective(cfg, {})
    return _sweep_objective(cfg, results)


def _launched_run_dir(own: Path) -> tuple[Path, bool]:
    """This job's run directory and whether this process writes it: rank 0's folder on every rank of
    a job started by torchrun or srun (:mod:`unlearn.training.launch`), else Hydra's."""
    from unlearn.training import launch

    started = launch.launched()
    if started is None:
        return own, True
    launch.init(started)
    path = Path(launch.from_rank0(str(own)))
    if started.rank != 0:
        launch.drop_stray_dir(own, path)
    return path, started.rank == 0


def start(cfg: DictConfig, run_dir: RunDir, meta: dict[str, Any]) -> Any:
    """Validate and set up the job, set torch's threads (``trainer.threads``), write provenance.json."""
    import torch

    from unlearn.job import build_job

    job = build_job(cfg, run_dir)
    if job.loop.threads is not None:
        torch.set_num_threads(job.loop.threads)
    run_dir.write_provenance(
        job.seed,
        {
            "overrides": meta["overrides"],
            "group": meta["group"],
            "threads": job.loop.threads,
            "malloc_tuned": meta.get("malloc_tuned", False),
        },
    )
    return job


def _container(cfg: DictConfig) -> dict[str, Any]:
    """The config as written before validation: resolved where it resolves (reports group jobs by
    their values, e.g. ``smoothing.rate``, not by an interpolation), else as composed."""
    # a DictConfig always converts to a dict; to_container's signature covers lists and scalars too
    try:
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    except Exception:  # an incomplete or broken config: validation names the key below
        return cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=False))


def _finished(run_dir: Path, cfg: DictConfig, multirun: bool = False) -> tuple[dict[str, Any], str] | None:
    """The results of a finished run of this job, and the folder that holds them: ``run_dir``, or
    in a sweep, the job's folder under another number (``3_<name>`` beside ``5_<name>``): a sweep
    run again with more values numbers its jobs anew, and must not run its finished ones again."""
    from unlearn.job import world_of

    try:
        h = config_hash(cfg, world_of(cfg))
    except Exception:  # an incomplete config: validation reports it properly below
        return None
    places = [run_dir]
    num, _, name = run_dir.name.partition("_")
    if multirun and num.isdigit() and run_dir.parent.is_dir():
        for other in sorted(run_dir.parent.iterdir()):
            n, _, rest = other.name.partition("_")
            if other != run_dir and n.isdigit() and rest == name:
                places.append(other)
    for place in places:
        done = completed(place, h)
        if done is not None:
            return dict(done), str(place)
    return None


def _sweep_objective(cfg: DictConfig, results: dict[str, Any]) -> Any:
    """What a Hydra sweeper (Optuna) optimises: the ``objective_metric`` value(s) from the results;
    NaN for a failed or diverged job, which Optuna records as a failed trial."""
    keys = cfg.get("objective_metric")
    if not keys:
        return None
    scored = results.get("status") in (None, "ok", "collapsed")  # a diverged run may still be evaluated

    def one(key: str) -> float:
        value = results.get(str(key)) if scored else None
        return float(value) if is_number(value) else float("nan")

    return one(keys) if isinstance(keys, str) else [one(k) for k in keys]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
