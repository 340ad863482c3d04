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

from omegaconf import OmegaConf

from unlearn import phases, resume
from unlearn.components import Setup
from unlearn.eval.collapse import collapse_reason
from unlearn.loggers import JsonlLogger, wandb_logger
from unlearn.models.load import save_checkpoint
from unlearn.rundir import write_json
from unlearn.training.launch import from_rank0
from unlearn.summary import print_table
from unlearn.utils.progress import say
from unlearn.validation import check_splits


def namespaced(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in metrics.items()}


def _load_splits(s: Setup) -> dict[str, list[dict[str, Any]]]:
    t = time.perf_counter()
    splits = s.data.build()
    say(f"benchmark {s.bench}: " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()) + f" ({time.perf_counter() - t:.1f}s)")
    phases.check_roles(s, splits)  # before any fine-tuning: a typo in benchmark.roles costs seconds
    check_splits(s.evaluator, splits)  # and an empty holdout or forget split, too
    return splits


def _record(s: Setup, role: str, record: Mapping[str, Any] | None) -> dict[str, float]:
    if record is None:
        return {}
    write_json(s.run.file(f"eval_{role}.json"), record)
    s.run.update(namespaced(f"{role}/{s.bench}", record["metrics"]))
    return dict(record["metrics"])


def _loggers(s: Setup, meta: Mapping[str, Any]) -> list[Any]:
    """The local metrics file and W&B; a resumed job continues both where its checkpoint left off."""
    ckpt = meta.get("resume_from")
    out: list[Any] = [JsonlLogger(s.run.file("metrics.jsonl"), start_step=resume.checkpoint_step(ckpt))]
    wb = OmegaConf.select(s.cfg, "logger.wandb")
    if wb is not None:
        settings = OmegaConf.to_container(wb, resolve=True)
        assert isinstance(settings, dict)
        run_id = resume.wandb_run_id(s.run.path, ckpt is not None) if int(s.cfg.train.get("checkpoint_every") or 0) > 0 else None
        out.append(wandb_logger(settings, s.run.path, meta.get("name", "unlearn"), meta.get("group"), list(meta.get("tags", [])), run_id))
    return out


def _trained_model(s: Setup, target: Any, lora: Any) -> tuple[Any, Any]:
    model, tok = target.load(s)
    if lora:
        from unlearn.models.lora import apply_lora

        model = apply_lora(model, lora)
    return model, tok


def run_unlearn(s: Setup, meta: Mapping[str, Any]) -> dict[str, Any]:
    splits = _load_splits(s)
    target = phases.reference_model(s, splits, "target")
    assert target is not None
    if not s.run.writes:  # a non-zero rank of a launched job: it only trains
        model, tok = _trained_model(s, target, s.cfg.model.get("lora"))
        phases.unlearn(s, model, tok, splits, [], _callbacks(s), resume_from=meta.get("resume_from"))
        return {}
    oracle = phases.oracle_record(s, splits)
    cols = {"oracle": _record(s, "oracle", oracle)} if oracle else {}
    target_rec = phases.cached_evaluation(s, target, splits, "target", oracle)
    cols = {"target": _record(s, "target", target_rec), **cols}
    model, tok = _trained_model(s, target, s.cfg.model.get("lora"))
    loggers = _loggers(s, meta)
    status = "failed"
    try:
        t = time.perf_counter()
        module = phases.unlearn(s, model, tok, splits, loggers, _callbacks(s), resume_from=meta.get("resume_from"))
        if getattr(module, "gathered", None) is not None:  # trained sharded in this process (FSDP under torchrun)
            model, tok = _trained_model(s, target, s.cfg.model.get("lora"))
            model.load_state_dict(module.gathered)
            module.gathered = None
        s.run.update({"time/unlearn_s": round(time.perf_counter() - t, 2), "train/steps_done": module.steps_done})
        reason = s.step.guard.reason if module.diverged else None
        if module.diverged:
            status = "diverged"
            s.run.status("diverged", reason)
            if not phases.evaluates_diverged(s.evaluator):
                say(f"diverged: {reason}; skipping evaluation of the unlearned model")
                return s.run.results
            # the diverging step was not applied, so the weights are the last finite ones
            say(f"diverged: {reason}; evaluating the last finite weights")
        unlearned = phases.evaluate(s, model, tok, splits, oracle, target=target_rec, diverged=reason)
        cols["unlearned"] = _record(s, "unlearned", unlearned)
        s.run.update(namespaced(f"eval/{s.bench}", unlearned["metrics"]))
        if not module.diverged:
            if s.cfg.get("save_model"):
                save_checkpoint(model, tok, s.run.file("model"))
            collapse = collapse_reason(unlearned)  # finite losses, yet the model is destroyed
            status = "collapsed" if collapse else "ok"
            s.run.status(status, collapse)
            if not s.cfg.train.get("keep_checkpoint"):
                resume.drop_checkpoints(s.run.path)
    finally:
        _finish_loggers(loggers, s.run.results, status)
    print_table(f"{s.bench} · {meta.get('name', '')}" + (f" ({status})" if status in ("diverged", "collapsed") else ""), cols, getattr(s.evaluator, "directions", {}))
    return s.run.results


def run_finetune(s: Setup, meta: Mapping[str, Any]) -> dict[str, Any]:
    splits = _load_splits(s)
    cols: dict[str, dict[str, float]] = {}
    oracle_rec = None
    for role in ("oracle", "target"):
        ref = phases.reference_model(s, splits, role)
        if ref is None:
            continue
        rec = phases.cached_evaluation(s, ref, splits, role, oracle_rec)
        cols[role] = _record(s, role, rec)
        oracle_rec = rec if role == "oracle" else oracle_rec
        if ref.path is not None:
            s.run.update({f"{role}/path": str(ref.path)})
            say(f"{role} model: {ref.path}")
    s.run.status("ok")
    print_table(f"{s.bench} · finetune", cols, getattr(s.evaluator, "directions", {}))
    return s.run.results


def run_eval(s: Setup, meta: Mapping[str, Any]) -> dict[str, Any]:
    splits = _load_splits(s)
    oracle = phases.oracle_record(s, splits)
    target = phases.reference_model(s, splits, "target")
    assert target is not None
    model, tok = target.load(s)
    rec = phases.evaluate(s, model, tok, splits, oracle)
    cols = {"model": _record(s, "model", rec)}
    s.run.update(namespaced(f"eval/{s.bench}", rec["metrics"]))
    s.run.status("ok")
    print_table(f"{s.bench} · eval", cols, getattr(s.evaluator, "directions", {}))
    return s.run.results


TASKS = {"unlearn": run_unlearn, "finetune": run_finetune, "eval": run_eval}


def _finish_loggers(loggers: list[Any], results: Mapping[str, Any], status: str) -> None:
    final = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for lg in loggers:
        if hasattr(lg, "experiment") and type(lg).__name__ == "WandbLogger":
            lg.experiment.summary.update({**final, "status": status})
            lg.finalize(status="success" if status == "ok" else "failed")
            lg.experiment.finish(exit_code=0 if status == "ok" else 1)


def _callbacks(s: Setup) -> list[Any]:
    """Periodic checkpoints (for resuming) and the user's ``train.callbacks``."""
    out = list(s.callbacks)
    every = int(s.cfg.train.get("checkpoint_every") or 0)
    if every > 0:
        from lightning.pytorch.callbacks import ModelCheckpoint

        d = resume.checkpoint_dir(s.run.path)
        if s.run.writes:
            d = resume.stamp_checkpoints(s.run.path, s.run.results["config_hash"])
        out.append(ModelCheckpoint(dirpath=str(d), every_n_train_steps=every, save_last=True, save_top_k=0))
    return out


def run(s: Setup, meta: Mapping[str, Any]) -> dict[str, Any]:
    """Run the configured task; resume from this run directory's checkpoint when it has one."""
    h = resume.config_hash(s.cfg)
    ckpt = None
    if s.run.writes:  # rank 0 of a launched job decides, the other ranks resume from the same checkpoint
        ckpt = resume.resumable(s.run.path, h) if s.cfg.get("resume", True) else None
        if ckpt is None:
            resume.drop_checkpoints(s.run.path)
    ckpt = from_rank0(ckpt)
    s.run.update(config_hash=h)
    s.run.status("running")
    return TASKS[str(s.cfg.task)](s, {**meta, "resume_from": ckpt})
