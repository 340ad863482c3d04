"""The phases of a job: making target and oracle models, unlearning, evaluating.

Each phase is a function of the :class:`~unlearn.components.Setup` and plain data; the pipeline
(:mod:`unlearn.pipeline`) strings them together per task.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import torch
from omegaconf import OmegaConf

from unlearn import resume
from unlearn.cache import RECIPE_VERSION, digest
from unlearn.components import Setup
from unlearn.config import ConfigError, to_plain
from unlearn.data.format import encode_rows, prompt_length
from unlearn.data.paired import PairedStream
from unlearn.loggers import JsonlLogger
from unlearn.losses.context import PrepareContext
from unlearn.losses.nll import NLL
from unlearn.losses.objective import Objective
from unlearn.models.checkpointing import checkpointing, wanted
from unlearn.models.load import checkpoint_fingerprint, load_checkpoint, save_checkpoint
from unlearn.training.fit import fit, stream_length
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.training.optim import OptimConfig
from unlearn.models.reference import Reference
from unlearn.utils.progress import say

Rows = list[dict[str, Any]]
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


def check_roles(s: Setup, splits: Mapping[str, Rows]) -> None:
    """The splits that :func:`unlearn` will take from ``benchmark.roles`` exist.

    Run as soon as the splits are loaded: a typo then costs seconds, not a fine-tuned target and
    oracle. Only task=unlearn (which has an objective) reads the roles, and only those it uses.
    """
    if s.objective is None:
        return
    used = ["forget"] + ["retain"] * (s.objective.retain is not None) + ["normal_pool"] * bool(s.objective.smoothing.active)
    for role in used:
        split_names(splits, to_plain(OmegaConf.select(s.cfg, f"benchmark.roles.{role}")), f"benchmark.roles.{role}")


# -- models ------------------------------------------------------------------------------------
class ModelRef:
    """A model the job can load: the configured base model, a user checkpoint, or a cached one.

    ``key`` identifies its weights for cache keys (evaluations of it are cached under it).
    """

    def __init__(self, key: Any, path: Path | None) -> None:
        self.key, self.path = key, path

    def load(self, s: Setup) -> tuple[Any, Any]:
        model, tok = load_checkpoint(self.path, s.dtype) if self.path else s.spec.load(s.dtype)
        return model.to(s.device), tok


def require_labels(tok: Any, fmt: Any, rows: Rows, enc: Sequence[Mapping[str, Any]], max_length: int, key: str, what: str) -> None:
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


def finetune(s: Setup, model: Any, tok: Any, rows: Rows, log_dir: Path | None = None) -> None:
    """Plain NLL fine-tuning on ``rows`` with the benchmark's ``finetune`` recipe (in place)."""
    r = s.finetune  # the effective recipe, checked by make_setup (unlearn.components.finetune_recipe)
    optim = OptimConfig(lr=r["lr"], weight_decay=r["weight_decay"], schedule=r["schedule"], warmup_ratio=r["warmup_ratio"])
    bs, epochs, seed = int(r["batch_size"]), float(r["epochs"]), int(r["seed"])
    enc = encode_rows(tok, s.fmt, rows, int(r["max_length"]))
    key = "benchmark.finetune.max_length" if OmegaConf.select(s.cfg, "benchmark.finetune.max_length") is not None else "train.max_length"
    require_labels(tok, s.fmt, rows, enc, int(r["max_length"]), key, "fine-tuning")
    steps = max(1, int(epochs * len(enc) / bs))
    module = UnlearnModule(model, Objective(forget=None, retain=NLL()), optim=optim, step=StepConfig(clip_norm=1.0, diagnostics=False))
    stream = PairedStream(None, enc, stream_length(steps, 1, bs), seed=seed)
    loggers = [JsonlLogger(log_dir / "metrics.jsonl", phase="finetune")] if log_dir else []
    L.seed_everything(seed, verbose=False)
    with checkpointing(model, wanted(s.cfg)):  # same weights either way: not in the cache key
        fit(module, stream, tok.pad_token_id, bs, steps, s.loop.single_process(), loggers=loggers)  # cached by recipe: never trainer-dependent


def finetune_key(s: Setup, rows: Rows) -> dict[str, Any]:
    """Everything that determines a model fine-tuned on ``rows``: the cache key of the result.

    The recipe is the effective one (defaults and the ``train.max_length`` fallback filled in), and
    the weights' dtype and the trainer's precision are in, since each changes the weights."""
    return {
        "base": s.spec.cache_key(),
        "rows": digest(rows),
        "recipe": s.finetune,
        "prompt": to_plain(s.cfg.model.prompt),
        "version": RECIPE_VERSION,
        "dtype": str(s.dtype),
        "precision": str(s.loop.precision),
    }


def reference_model(s: Setup, splits: Mapping[str, Rows], role: str) -> ModelRef | None:
    """The benchmark's ``target`` or ``oracle`` model: a given path, or fine-tuned and cached.

    Returns None for an oracle with nothing configured (no forget quality then).
    """
    node = OmegaConf.select(s.cfg, f"benchmark.{role}")
    if node is None:
        return None
    if node.get("path"):
        path = Path(str(node.path)).expanduser()
        if not (path / "config.json").exists():
            raise ConfigError(f"benchmark.{role}.path: {path} is not a Hugging Face model folder (no config.json)")
        return ModelRef({"checkpoint": checkpoint_fingerprint(path)}, path)
    names = to_plain(node.get("finetune_on"))
    if not names:
        return ModelRef({"base": s.spec.cache_key()}, None) if role == "target" else None
    rows = gather(splits, names, f"benchmark.{role}.finetune_on")
    key = finetune_key(s, rows)

    def build(tmp: Path) -> None:
        say(f"fine-tuning the {role} model on {len(rows)} rows ({', '.join(names)}); cached for later runs")
        model, tok = s.spec.load(s.dtype)
        finetune(s, model.to(s.device), tok, rows, log_dir=tmp)
        save_checkpoint(model, tok, tmp)

    path, hit = s.cache.directory("models", key, build, label=f"the {role} model")
    if hit:
        say(f"{role} model: cached at {path}")
    return ModelRef({"finetuned": digest(key)}, path)


# -- evaluation --------------------------------------------------------------------------------
def _takes(evaluator: Any, name: str) -> bool:
    return name in inspect.signature(evaluator.evaluate).parameters


def evaluates_diverged(evaluator: Any) -> bool:
    """Whether the evaluator reports on a run that diverged (its ``evaluate`` takes ``diverged``)."""
    return _takes(evaluator, "diverged")


def evaluate(s: Setup, model: Any, tok: Any, splits: Mapping[str, Rows], oracle: Mapping[str, Any] | None = None, target: Mapping[str, Any] | None = None, diverged: str | None = None) -> dict[str, Any]:
    """``target`` (the target model's evaluation record) reaches evaluators whose ``evaluate``
    takes it, for metrics relative to the starting point (WMDP's MMLU recovery); ``diverged`` (the
    divergence guard's reason) those that take it (the copyright setting counts it as collapse).
    The record then goes through the benchmark's shared collapse check (``benchmark.collapse``),
    relative to ``target``."""
    model.to(s.device)
    extra = {k: v for k, v in (("target", target), ("diverged", diverged)) if v is not None and _takes(s.evaluator, k)}
    record = s.evaluator.evaluate(model, tok, s.fmt, splits, oracle=oracle, **extra)
    return s.collapse.apply(record, target) if s.collapse is not None else record


def evaluation_key(s: Setup, ref: ModelRef, splits: Mapping[str, Rows], oracle: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The cache key of ``ref``'s evaluation. The oracle's record is in it (its arrays and metrics,
    which forget quality and PrivLeak are computed against), so a changed oracle is a new entry."""
    oracle_part = None if oracle is None else digest({"arrays": oracle.get("arrays"), "metrics": oracle.get("metrics")})
    return {
        "model": ref.key,
        "evaluator": to_plain(s.cfg.benchmark.eval),
        "splits": digest({k: splits[k] for k in sorted(splits)}),
        "prompt": to_plain(s.cfg.model.prompt),
        "oracle": oracle_part,
        "version": RECIPE_VERSION,
        "metrics": METRICS_VERSION,
    }


def cached_evaluation(s: Setup, ref: ModelRef, splits: Mapping[str, Rows], role: str, oracle: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Evaluation of a target/oracle model, cached under its weights' key, the evaluator and ``oracle``."""
    key = evaluation_key(s, ref, splits, oracle)

    def compute() -> dict[str, Any]:
        say(f"evaluating the {role} model")
        model, tok = ref.load(s)
        return evaluate(s, model, tok, splits, oracle)

    record, hit = s.cache.json("evals", key, compute, label=f"the {role} model's evaluation")
    if hit:
        say(f"{role} evaluation: cached")
    return record


def oracle_record(s: Setup, splits: Mapping[str, Rows]) -> dict[str, Any] | None:
    node = s.cfg.benchmark.get("oracle")
    if node is not None and node.get("eval_file"):
        from unlearn.rundir import read_json

        path = Path(str(node.eval_file)).expanduser()
        if not path.exists():
            raise ConfigError(f"benchmark.oracle.eval_file: {path} does not exist")
        record = read_json(path)
        # an evaluator that reads other formats (TOFU's or MUSE's own logs) says what it needs
        convert = getattr(s.evaluator, "oracle_from_file", None)
        if convert is not None:
            try:
                return convert(record)
            except ValueError as e:
                raise ConfigError(f"benchmark.oracle.eval_file: {path} {e}") from e
        if "arrays" not in record or "forget_truth_ratio" not in record["arrays"]:
            raise ConfigError(f"benchmark.oracle.eval_file: {path} has no arrays.forget_truth_ratio (write it with task=eval or a previous run's eval_oracle.json)")
        return record
    ref = reference_model(s, splits, "oracle")
    return cached_evaluation(s, ref, splits, "oracle") if ref is not None else None


# -- unlearning --------------------------------------------------------------------------------
def epoch_steps(epochs: float, n_rows: int, samples_per_step: int) -> int:
    """Optimizer steps for ``epochs`` passes over ``n_rows`` forget rows (at least one step)."""
    return max(1, math.ceil(epochs * n_rows / samples_per_step))


def unlearn(s: Setup, model: Any, tok: Any, splits: Mapping[str, Rows], loggers: Sequence[Any], callbacks: Sequence[Any] = (), resume_from: Path | None = None) -> UnlearnModule:
    """Run the unlearning phase on ``model`` in place; returns the module (``.diverged`` etc.).

    ``resume_from`` is a checkpoint of this same run: training continues from its step, and the
    data stream from the item after it, so the result equals an uninterrupted run's."""
    assert s.objective is not None
    cfg, obj = s.cfg, s.objective
    roles = cfg.benchmark.roles
    max_len = int(cfg.train.max_length)
    forget_rows = gather(splits, to_plain(roles.forget), "benchmark.roles.forget")
    retain_rows = gather(splits, to_plain(roles.retain), "benchmark.roles.retain") if obj.retain is not None else []
    if not forget_rows and obj.forget is not None:
        raise ConfigError("benchmark.roles.forget selects no rows: nothing to unlearn")
    encoded: dict[str, Any] = {"forget": encode_rows(tok, s.fmt, forget_rows, max_len), "retain": encode_rows(tok, s.fmt, retain_rows, max_len)}
    rows: dict[str, Any] = {"forget": forget_rows, "retain": retain_rows}
    for task in ("forget", "retain"):
        require_labels(tok, s.fmt, rows[task], encoded[task], max_len, "train.max_length", task)
    groups = None
    if obj.smoothing.active:
        pool_rows = gather(splits, to_plain(roles.normal_pool), "benchmark.roles.normal_pool")
        normal = obj.smoothing.provider.select(forget_rows, pool_rows, obj.smoothing.K - 1)
        rows["normal"], groups = normal.rows, normal.groups
        encoded["normal"] = encode_rows(tok, s.fmt, normal.rows, max_len)
        s.run.update({f"smoothing/{k}": v for k, v in normal.info.items()})
    bs, steps = int(cfg.train.batch_size), int(cfg.train.steps)
    world = s.loop.world_size  # every rank takes every world-th item of the stream
    if cfg.train.get("epochs") is not None:  # papers give epochs (RWKU: 2); the loop counts steps
        steps = epoch_steps(float(cfg.train.epochs), len(forget_rows), bs * s.step.accumulate * world)
    done = resume.checkpoint_step(resume_from)
    stream = PairedStream(
        encoded["forget"] if obj.forget is not None else None,
        encoded["retain"] or None,
        stream_length(steps, s.step.accumulate, bs, world),
        seed=int(cfg.seed),
        normal_pool=encoded.get("normal"),
        normal_groups=groups,
        start=stream_length(done, s.step.accumulate, bs, world),
    )
    L.seed_everything(int(cfg.seed), verbose=False)
    model.to(s.device).train()
    obj.prepare(PrepareContext(model=model, reference=Reference(model), tokenizer=tok, encoded=encoded, batch_size=bs, seed=int(cfg.seed), rows=rows, fmt=s.fmt, max_length=max_len))
    module = UnlearnModule(model, obj, s.combiner, s.optim, s.step)
    say(f"unlearning: {len(forget_rows)} forget rows, {len(retain_rows)} retain rows, {steps} steps of batch {bs}" + (f" (resuming after step {done})" if done else ""))
    with checkpointing(model, wanted(cfg)):
        fit(module, stream, tok.pad_token_id, bs, steps, s.loop, loggers=loggers, callbacks=callbacks, default_root_dir=str(s.run.path), ckpt_path=str(resume_from) if resume_from else None)
    return module
