"""The phases of a job: making target and oracle models, unlearning, evaluating.

Each phase is a function of the :class:`~unlearn.job.Job` and plain data; the pipeline
(:mod:`unlearn.pipeline`) strings them together per task.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch

from unlearn import resume
from unlearn.cache import RECIPE_VERSION, digest
from unlearn.config import ConfigError
from unlearn.data.format import encode_rows, prompt_length
from unlearn.data.paired import PairedStream
from unlearn.evaluator import EvalContext
from unlearn.job import Job, ModelSource
from unlearn.loggers import JsonlLogger
from unlearn.losses.context import PrepareContext
from unlearn.losses.nll import NLL
from unlearn.losses.objective import Objective
from unlearn.models.checkpointing import checkpointing
from unlearn.models.load import checkpoint_fingerprint, load_checkpoint, save_checkpoint
from unlearn.models.reference import Reference
from unlearn.training.fit import fit, stream_length
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.utils.progress import say

Rows = list[dict[str, Any]]
TaskRows = Sequence[Mapping[str, Any]]  # a training task's rows, as PrepareContext.rows holds them
#: bump when a metric's definition changes (2: TOFU's geometric truth ratio, MUSE-sign PrivLeak,
#: Min-K%++ floor, VerbMem with BOS, collapse flags), so cached evaluations are not reused
METRICS_VERSION = 2


def split_names(splits: Mapping[str, Rows], names: Sequence[str] | str | None, key: str) -> list[str]:
    """``names`` as a list; an unknown name is a config error naming ``key`` and the splits there are."""
    names = [] if names is None else [names] if isinstance(names, str) else list(names)
    for n in names:
        if n not in splits:
            raise ConfigError(f"{key}: the benchmark has no split {n!r} (it has {sorted(splits)})")
    return names


def gather(splits: Mapping[str, Rows], names: Sequence[str] | str | None, key: str) -> Rows:
    """Concatenate the named splits; an unknown name is a config error naming ``key``."""
    return [row for n in split_names(splits, names, key) for row in splits[n]]


def check_roles(job: Job, splits: Mapping[str, Rows]) -> None:
    """The splits that :func:`unlearn` will take from ``benchmark.roles`` exist.

    Run as soon as the splits are loaded: a typo then costs seconds, not a fine-tuned target and
    oracle. Only task=unlearn (which has an objective) reads the roles, and only those it uses.
    """
    if job.objective is None:
        return
    used = (
        ["forget"]
        + ["retain"] * (job.objective.retain is not None)
        + ["normal_pool"] * bool(job.objective.smoothing.active)
    )
    for role in used:
        split_names(splits, getattr(job.roles, role), f"benchmark.roles.{role}")


# -- models ------------------------------------------------------------------------------------
class ModelRef:
    """A model the job can load: the configured base model, a user checkpoint, or a cached one.

    ``key`` identifies its weights for cache keys (evaluations of it are cached under it).
    """

    def __init__(self, key: Any, path: Path | None) -> None:
        self.key, self.path = key, path

    def load(self, job: Job) -> tuple[Any, Any]:
        model, tok = load_checkpoint(self.path, job.dtype) if self.path else job.spec.load(job.dtype)
        return model.to(job.device), tok


def require_labels(
    tok: Any,
    fmt: Any,
    rows: Sequence[Mapping[str, Any]],
    enc: Sequence[Mapping[str, Any]],
    max_length: int,
    key: str,
    what: str,
) -> None:
    """Stop before training when no row of ``what`` keeps a predicted answer token within
    ``max_length``: every gradient would be zero and the run would still look fine. (A label
    counts from the second position on: the first token is never predicted.)"""
    if not enc or any(lab != -100 for e in enc for lab in e["labels"][1:]):
        return
    shortest = min(prompt_length(tok, fmt, r) for r in rows)
    raise ConfigError(
        f"{key}={max_length} leaves no answer token to train on in any of the {len(rows)} {what} rows: "
        f"the shortest prompt is {shortest} tokens, so {key} must be at least {max(shortest + 1, 2)}"
    )


def finetune(job: Job, model: Any, tok: Any, rows: Rows, log_dir: Path | None = None) -> None:
    """Plain NLL fine-tuning on ``rows`` with the benchmark's ``finetune`` recipe (in place)."""
    r = job.finetune  # checked by build_job, since this job fine-tunes
    bs = r.batch_size
    max_length, key = job.finetune_max_length
    enc = encode_rows(tok, job.fmt, rows, max_length)
    require_labels(tok, job.fmt, rows, enc, max_length, key, "fine-tuning")
    steps = max(1, int(r.epochs * len(enc) / bs))
    module = UnlearnModule(
        model, Objective(forget=None, retain=NLL()), optim=r.optim(), step=StepConfig(clip_norm=1.0, diagnostics=False)
    )
    stream = PairedStream(None, enc, stream_length(steps, 1, bs), seed=r.seed)
    loggers = [JsonlLogger(log_dir / "metrics.jsonl", phase="finetune")] if log_dir else []
    L.seed_everything(r.seed, verbose=False)
    with checkpointing(model, job.gradient_checkpointing):  # same weights either way: not in the cache key
        fit(
            module, stream, tok.pad_token_id, bs, steps, job.loop.single_process(), loggers=loggers
        )  # cached by recipe: never trainer-dependent


def finetune_key(job: Job, rows: Rows) -> dict[str, Any]:
    """Everything that determines a model fine-tuned on ``rows``: the cache key of the result.

    The recipe is the effective one (defaults and the ``train.max_length`` fallback filled in), and
    the weights' dtype and the trainer's precision are in, since each changes the weights."""
    return {
        "base": job.spec.cache_key(),
        "rows": digest(rows),
        "recipe": job.finetune_key(),
        "prompt": job.prompt,
        "version": RECIPE_VERSION,
        "dtype": str(job.dtype),
        "precision": str(job.loop.precision),
    }


def reference_model(job: Job, splits: Mapping[str, Rows], role: str) -> ModelRef | None:
    """The benchmark's ``target`` or ``oracle`` model: a given path, or fine-tuned and cached.

    Returns None for an oracle with nothing configured (no forget quality then).
    """
    source: ModelSource | None = getattr(job, role)
    if source is None:
        return None
    if source.path:
        path = Path(source.path).expanduser()
        if not (path / "config.json").exists():
            raise ConfigError(f"benchmark.{role}.path: {path} is not a Hugging Face model folder (no config.json)")
        return ModelRef({"checkpoint": checkpoint_fingerprint(path)}, path)
    if not source.finetunes:
        return ModelRef({"base": job.spec.cache_key()}, None) if role == "target" else None
    names = list(source.finetune_on)
    rows = gather(splits, names, f"benchmark.{role}.finetune_on")
    key = finetune_key(job, rows)

    def build(tmp: Path) -> None:
        say(f"fine-tuning the {role} model on {len(rows)} rows ({', '.join(names)}); cached for later runs")
        model, tok = job.spec.load(job.dtype)
        finetune(job, model.to(job.device), tok, rows, log_dir=tmp)
        save_checkpoint(model, tok, tmp)

    path, hit = job.cache.directory("models", key, build, label=f"the {role} model")
    if hit:
        say(f"{role} model: cached at {path}")
    return ModelRef({"finetuned": digest(key)}, path)


# -- evaluation --------------------------------------------------------------------------------
def evaluate(
    job: Job,
    model: Any,
    tok: Any,
    splits: Mapping[str, Rows],
    oracle: Mapping[str, Any] | None = None,
    target: Mapping[str, Any] | None = None,
    diverged: str | None = None,
) -> dict[str, Any]:
    """The evaluator's record of ``model`` (:class:`~unlearn.evaluator.EvalContext` says what each
    argument is for), then the benchmark's shared collapse check (``benchmark.collapse``),
    relative to ``target``."""
    model.to(job.device)
    ctx = EvalContext(model, tok, job.fmt, splits, oracle=oracle, target=target, diverged=diverged)
    record = job.evaluator.evaluate(ctx)
    return job.collapse.apply(record, target) if job.collapse is not None else record


def evaluation_key(
    job: Job, ref: ModelRef, splits: Mapping[str, Rows], oracle: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The cache key of ``ref``'s evaluation. The oracle's record is in it (its arrays and metrics,
    which forget quality and PrivLeak are computed against), so a changed oracle is a new entry;
    so are the dtype and the kind of device the model is evaluated in (``model.dtype: auto`` is
    fp32 on a CPU and bf16 on a GPU, and a cache may be shared between machines)."""
    oracle_part = None if oracle is None else digest({"arrays": oracle.get("arrays"), "metrics": oracle.get("metrics")})
    return {
        "model": ref.key,
        "dtype": str(job.dtype),
        "device": torch.device(job.device).type,
        "evaluator": job.evaluator_config,
        "splits": digest({k: splits[k] for k in sorted(splits)}),
        "prompt": job.prompt,
        "oracle": oracle_part,
        "version": RECIPE_VERSION,
        "metrics": METRICS_VERSION,
    }


def cached_evaluation(
    job: Job, ref: ModelRef, splits: Mapping[str, Rows], role: str, oracle: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Evaluation of a target/oracle model, cached under its weights' key, the evaluator and ``oracle``."""
    key = evaluation_key(job, ref, splits, oracle)

    def compute() -> dict[str, Any]:
        say(f"evaluating the {role} model")
        model, tok = ref.load(job)
        return evaluate(job, model, tok, splits, oracle)

    record, hit = job.cache.json("evals", key, compute, label=f"the {role} model's evaluation")
    if hit:
        say(f"{role} evaluation: cached")
    return record


def oracle_record(job: Job, splits: Mapping[str, Rows]) -> dict[str, Any] | None:
    if job.oracle is not None and job.oracle.eval_file:
        from unlearn.rundir import read_json

        path = Path(job.oracle.eval_file).expanduser()
        if not path.exists():
            raise ConfigError(f"benchmark.oracle.eval_file: {path} does not exist")
        record = read_json(path)
        # an evaluator that reads other formats (TOFU's or MUSE's own logs) says what it needs
        convert = getattr(job.evaluator, "oracle_from_file", None)
        if convert is not None:
            try:
                return convert(record)
            except ValueError as e:
                raise ConfigError(f"benchmark.oracle.eval_file: {path} {e}") from e
        if "arrays" not in record or "forget_truth_ratio" not in record["arrays"]:
            raise ConfigError(
                f"benchmark.oracle.eval_file: {path} has no arrays.forget_truth_ratio "
                "(write it with task=eval or a previous run's eval_oracle.json)"
            )
        return record
    ref = reference_model(job, splits, "oracle")
    return cached_evaluation(job, ref, splits, "oracle") if ref is not None else None


# -- unlearning --------------------------------------------------------------------------------
def epoch_steps(epochs: float, n_rows: int, samples_per_step: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``n_rows`` forget rows (at least one step)."""
    return max(1, math.ceil(epochs * n_rows / samples_per_step))


def _encode(job: Job, tok: Any, splits: Mapping[str, Rows]) -> tuple[dict[str, TaskRows], dict[str, Any], Any]:
    """The rows of each task (forget, retain, SGA's normal samples), encoded, and the normal
    samples' groups; a task whose every row lost its answer to ``train.max_length`` stops here."""
    obj, max_len = job.objective, job.train.max_length
    assert obj is not None
    rows: dict[str, TaskRows] = {
        "forget": gather(splits, job.roles.forget, "benchmark.roles.forget"),
        "retain": gather(splits, job.roles.retain, "benchmark.roles.retain") if obj.retain is not None else [],
    }
    if not rows["forget"] and obj.forget is not None:
        raise ConfigError("benchmark.roles.forget selects no rows: nothing to unlearn")
    encoded: dict[str, Any] = {task: encode_rows(tok, job.fmt, rows[task], max_len) for task in ("forget", "retain")}
    for task in ("forget", "retain"):
        require_labels(tok, job.fmt, rows[task], encoded[task], max_len, "train.max_length", task)
    groups = None
    if obj.smoothing.active:
        pool_rows = gather(splits, job.roles.normal_pool, "benchmark.roles.normal_pool")
        normal = obj.smoothing.provider.select(rows["forget"], pool_rows, obj.smoothing.K - 1)
        rows["normal"], groups = normal.rows, normal.groups
        encoded["normal"] = encode_rows(tok, job.fmt, normal.rows, max_len)
        job.run.update({f"smoothing/{k}": v for k, v in normal.info.items()})
    return rows, encoded, groups


def unlearn(
    job: Job,
    model: Any,
    tok: Any,
    splits: Mapping[str, Rows],
    loggers: Sequence[Any],
    callbacks: Sequence[Any] = (),
    resume_from: Path | None = None,
) -> UnlearnModule:
    """Run the unlearning phase on ``model`` in place; returns the module (``.diverged`` etc.).

    ``resume_from`` is a checkpoint of this same run: training continues from its step, and the
    data stream from the item after it, so the result equals an uninterrupted run's."""
    obj = job.objective
    assert obj is not None
    rows, encoded, groups = _encode(job, tok, splits)
    bs, steps, accumulate = job.train.batch_size, job.train.steps, job.step.accumulate
    world = job.loop.world_size  # every rank takes every world-th item of the stream
    if job.train.epochs is not None:  # papers give epochs (RWKU: 2); the loop counts steps
        steps = epoch_steps(job.train.epochs, len(rows["forget"]), bs * accumulate * world)
    done = resume.checkpoint_step(resume_from)
    stream = PairedStream(
        encoded["forget"] if obj.forget is not None else None,
        encoded["retain"] or None,
        stream_length(steps, accumulate, bs, world),
        seed=job.seed,
        normal_pool=encoded.get("normal"),
        normal_groups=groups,
        start=stream_length(done, accumulate, bs, world),
    )
    L.seed_everything(job.seed, verbose=False)
    model.to(job.device).train()
    obj.prepare(
        PrepareContext(
            model=model,
            reference=Reference(model),
            tokenizer=tok,
            encoded=encoded,
            batch_size=bs,
            seed=job.seed,
            rows=rows,
            fmt=job.fmt,
            max_length=job.train.max_length,
        )
    )
    module = UnlearnModule(model, obj, job.combiner, job.optim, job.step)
    say(
        f"unlearning: {len(rows['forget'])} forget rows, {len(rows['retain'])} retain rows, {steps} steps of batch {bs}"
        + (f" (resuming after step {done})" if done else "")
    )
    with checkpointing(model, job.gradient_checkpointing):
        fit(
            module,
            stream,
            tok.pad_token_id,
            bs,
            steps,
            job.loop,
            loggers=loggers,
            callbacks=callbacks,
            default_root_dir=str(job.run.path),
            ckpt_path=str(resume_from) if resume_from else None,
        )
    return module
