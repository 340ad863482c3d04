"""One pipeline, three entry modes (``task=``): ``unlearn`` (default), ``finetune``, ``eval``.

- ``unlearn``: target model (given or fine-tuned and cached) → evaluate target and oracle
  (cached) → unlearn → evaluate → results table and ``results.json``.
- ``finetune``: build (or find in the cache) the benchmark's target and oracle models, evaluate
  them, and save them into the run directory.
- ``eval``: evaluate the target model (``benchmark.target.path`` = any checkpoint) as is.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from lightning.pytorch.loggers import WandbLogger

from unlearn import phases, resume
from unlearn.eval.collapse import collapse_reason
from unlearn.job import Job
from unlearn.loggers import JsonlLogger, wandb_logger
from unlearn.models.load import save_checkpoint
from unlearn.rules import is_number
from unlearn.rundir import write_json
from unlearn.summary import print_table
from unlearn.training.launch import from_rank0
from unlearn.utils.progress import say
from unlearn.validation import check_splits


def namespaced(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def _load_splits(job: Job) -> dict[str, list[dict[str, Any]]]:
    t = time.perf_counter()
    splits = job.data.build()
    say(
        f"benchmark {job.bench}: "
        + ", ".join(f"{k} {len(v)}" for k, v in splits.items())
        + f" ({time.perf_counter() - t:.1f}s)"
    )
    phases.check_roles(job, splits)  # before any fine-tuning: a typo in benchmark.roles costs seconds
    check_splits(job.evaluator, splits)  # and an empty holdout or forget split, too
    return splits


def _record(job: Job, role: str, record: Mapping[str, Any] | None) -> dict[str, float]:
    if record is None:
        return {}
    write_json(job.run.file(f"eval_{role}.json"), record)
    job.run.update(namespaced(f"{role}/{job.bench}", record["metrics"]))
    return dict(record["metrics"])


def _loggers(job: Job, meta: Mapping[str, Any]) -> list[Any]:
    """The local metrics file and W&B; a resumed job continues both where its checkpoint left off."""
    ckpt = meta.get("resume_from")
    out: list[Any] = [JsonlLogger(job.run.file("metrics.jsonl"), start_step=resume.checkpoint_step(ckpt))]
    if job.wandb is not None:
        run_id = resume.wandb_run_id(job.run.path, ckpt is not None) if job.train.checkpoint_every > 0 else None
        out.append(
            wandb_logger(
                job.wandb,
                job.run.path,
                meta.get("name", "unlearn"),
                meta.get("group"),
                list(meta.get("tags", [])),
                run_id,
            )
        )
    return out


def _trained_model(job: Job, target: Any) -> tuple[Any, Any]:
    model, tok = target.load(job)
    if job.lora:
        from unlearn.models.lora import apply_lora

        model = apply_lora(model, job.lora)
    return model, tok


def run_unlearn(job: Job, meta: Mapping[str, Any]) -> dict[str, Any]:
    splits = _load_splits(job)
    # rank 0 alone builds (fine-tunes and caches) the target of a launched job; the other ranks take
    # its cache entry. (A rank that is not 0 cannot build one: transformers' save_pretrained writes
    # nothing on it when a process group exists.)
    target = from_rank0(phases.reference_model(job, splits, "target") if job.run.writes else None)
    assert target is not None
    if not job.run.writes:  # a non-zero rank of a launched job: it only trains
        model, tok = _trained_model(job, target)
        phases.unlearn(job, model, tok, splits, [], _callbacks(job), resume_from=meta.get("resume_from"))
        return {}
    oracle = phases.oracle_record(job, splits)
    cols = {"oracle": _record(job, "oracle", oracle)} if oracle else {}
    target_rec = phases.cached_evaluation(job, target, splits, "target", oracle)
    cols = {"target": _record(job, "target", target_rec), **cols}
    model, tok = _trained_model(job, target)
    loggers = _loggers(job, meta)
    status = "failed"
    try:
        t = time.perf_counter()
        module = phases.unlearn(job, model, tok, splits, loggers, _callbacks(job), resume_from=meta.get("resume_from"))
        if getattr(module, "gathered", None) is not None:  # trained sharded in this process (FSDP under torchrun)
            model, tok = _trained_model(job, target)
            model.load_state_dict(module.gathered)
            module.gathered = None
        job.run.update({"time/unlearn_s": round(time.perf_counter() - t, 2), "train/steps_done": module.steps_done})
        reason = job.step.guard.reason if module.diverged else None
        if module.diverged:
            status = "diverged"
            job.run.status("diverged", reason)
            if not job.evaluator.reports_diverged:
                say(f"diverged: {reason}; skipping evaluation of the unlearned model")
                return job.run.results
            # the diverging step was not applied, so the weights are the last finite ones
            say(f"diverged: {reason}; evaluating the last finite weights")
        unlearned = phases.evaluate(job, model, tok, splits, oracle, target=target_rec, diverged=reason)
        cols["unlearned"] = _record(job, "unlearned", unlearned)
        job.run.update(namespaced(f"eval/{job.bench}", unlearned["metrics"]))
        if not module.diverged:
            if job.save_model:
                save_checkpoint(model, tok, job.run.file("model"))
            collapse = collapse_reason(unlearned)  # finite losses, yet the model is destroyed
            status = "collapsed" if collapse else "ok"
            job.run.status(status, collapse)
            if not job.train.keep_checkpoint:
                resume.drop_checkpoints(job.run.path)
    finally:
        _finish_loggers(loggers, job.run.results, status)
    print_table(
        f"{job.bench} · {meta.get('name', '')}" + (f" ({status})" if status in ("diverged", "collapsed") else ""),
        cols,
        getattr(job.evaluator, "directions", {}),
    )
    return job.run.results


def run_finetune(job: Job, meta: Mapping[str, Any]) -> dict[str, Any]:
    splits = _load_splits(job)
    cols: dict[str, dict[str, float]] = {}
    oracle_rec = None
    for role in ("oracle", "target"):
        ref = phases.reference_model(job, splits, role)
        if ref is None:
            continue
        rec = phases.cached_evaluation(job, ref, splits, role, oracle_rec)
        cols[role] = _record(job, role, rec)
        oracle_rec = rec if role == "oracle" else oracle_rec
        if ref.path is not None:
            job.run.update({f"{role}/path": str(ref.path)})
            say(f"{role} model: {ref.path}")
    job.run.status("ok")
    print_table(f"{job.bench} · finetune", cols, getattr(job.evaluator, "directions", {}))
    return job.run.results


def run_eval(job: Job, meta: Mapping[str, Any]) -> dict[str, Any]:
    splits = _load_splits(job)
    oracle = phases.oracle_record(job, splits)
    target = phases.reference_model(job, splits, "target")
    assert target is not None
    model, tok = target.load(job)
    rec = phases.evaluate(job, model, tok, splits, oracle)
    cols = {"model": _record(job, "model", rec)}
    job.run.update(namespaced(f"eval/{job.bench}", rec["metrics"]))
    job.run.status("ok")
    print_table(f"{job.bench} · eval", cols, getattr(job.evaluator, "directions", {}))
    return job.run.results


TASKS = {"unlearn": run_unlearn, "finetune": run_finetune, "eval": run_eval}


def _finish_loggers(loggers: list[Any], results: Mapping[str, Any], status: str) -> None:
    final = {k: v for k, v in results.items() if is_number(v)}
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            lg.experiment.summary.update({**final, "status": status})
            lg.finalize(status="success" if status == "ok" else "failed")
            lg.experiment.finish(exit_code=0 if status == "ok" else 1)


def _callbacks(job: Job) -> list[Any]:
    """Periodic checkpoints (for resuming) and the user's ``train.callbacks``."""
    out = list(job.callbacks)
    every = job.train.checkpoint_every
    if every > 0:
        from lightning.pytorch.callbacks import ModelCheckpoint

        d = resume.checkpoint_dir(job.run.path)
        if job.run.writes:
            d = resume.stamp_checkpoints(job.run.path, job.run.results["config_hash"])
        out.append(ModelCheckpoint(dirpath=str(d), every_n_train_steps=every, save_last=True, save_top_k=0))
    return out


def run(job: Job, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Run the configured task; resume from this run directory's checkpoint when it has one."""
    h = job.config_hash
    ckpt = None
    if job.run.writes:  # rank 0 of a launched job decides, the other ranks resume from the same checkpoint
        ckpt = resume.resumable(job.run.path, h) if job.resume else None
        if ckpt is None:
            resume.drop_checkpoints(job.run.path)
    ckpt = from_rank0(ckpt)
    job.run.update(config_hash=h)
    job.run.status("running")
    return TASKS[job.task](job, {**meta, "resume_from": ckpt})
