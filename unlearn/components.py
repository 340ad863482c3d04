"""Everything a job needs that is cheap to build, built and checked before any model exists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unlearn.cache import Cache
from unlearn.combiners import Combiner
from unlearn.config import ConfigError, build, is_nonneg_int, is_pos_int, is_pos_number, to_plain
from unlearn.data.format import PromptFormat
from unlearn.losses.objective import Objective
from unlearn.models.checkpointing import wanted
from unlearn.models.load import resolve_device, resolve_dtype
from unlearn.rundir import RunDir
from unlearn.smoothing.sga import NoSmoothing
from unlearn.training.fit import LoopConfig
from unlearn.training.fsdp import check_sharded, is_sharded
from unlearn.training.launch import launched
from unlearn.training.module import DivergenceGuard, StepConfig, check_stream
from unlearn.validation import SEED_MAX, Problems, check_step_together, validate
from unlearn.training.optim import OptimConfig


@dataclass
class Setup:
    cfg: DictConfig
    run: RunDir
    spec: Any
    fmt: PromptFormat
    data: Any
    evaluator: Any
    objective: Objective | None
    combiner: Combiner
    optim: OptimConfig
    step: StepConfig
    loop: LoopConfig
    finetune: dict[str, Any]  # the effective recipe: see finetune_recipe
    cache: Cache
    device: torch.device
    dtype: torch.dtype
    callbacks: list[Any]
    collapse: Any = None  # unlearn.eval.collapse.CollapseCheck of benchmark.collapse (None: not checked)

    @property
    def bench(self) -> str:
        return str(self.cfg.benchmark.name)


def _objective(cfg: DictConfig) -> Objective | None:
    forget = build(cfg, "forget")
    retain = build(cfg, "retain")
    smoothing = build(cfg, "smoothing") or NoSmoothing()
    if forget is None and retain is None:
        raise ConfigError("forget and retain are both 'none': choose at least one loss (e.g. forget=ga)")
    if forget is None and getattr(smoothing, "active", False):
        raise ConfigError("smoothing is on (smoothing.rate != 0) but forget=none: smoothing weights the forget loss")
    return Objective(forget=forget, retain=retain, smoothing=smoothing)


def _plain(cfg: DictConfig, key: str) -> dict[str, Any]:
    node = OmegaConf.select(cfg, key)
    return dict(to_plain(node) or {})


#: the fine-tuning recipe's values where ``benchmark.finetune`` leaves them out (max_length: train.max_length)
FINETUNE_DEFAULTS: dict[str, Any] = {"lr": 1e-5, "weight_decay": 0.0, "schedule": "cosine", "warmup_ratio": 0.05, "batch_size": 16, "epochs": 5, "seed": 0}
_FINETUNE_CHECKS = {
    "lr": (is_pos_number, "a number > 0"),
    "batch_size": (is_pos_int, "an integer > 0"),
    "epochs": (is_pos_number, "a number > 0"),
    "max_length": (is_pos_int, "an integer > 0 (tokens)"),
    "seed": (lambda v: is_nonneg_int(v) and v <= SEED_MAX, f"an integer in [0, {SEED_MAX}] (numpy's seed range)"),
}


def _finetune_used(cfg: DictConfig) -> bool:
    """Whether the job fine-tunes a target or oracle model (mirrors :func:`unlearn.phases.reference_model`)."""
    for role in ("target", "oracle"):
        node = OmegaConf.select(cfg, f"benchmark.{role}")
        if node is None or node.get("path") or not to_plain(node.get("finetune_on")):
            continue
        # an eval_file replaces the oracle model, except in task=finetune, which builds it anyway
        if role == "oracle" and node.get("eval_file") and cfg.task != "finetune":
            continue
        return True
    return False


def finetune_recipe(cfg: DictConfig) -> dict[str, Any]:
    """The benchmark's fine-tuning recipe with its defaults filled in, checked when it is used.

    This effective recipe, not the configured one, goes into the fine-tuned models' cache key, so
    a changed ``train.max_length`` (the fallback of ``benchmark.finetune.max_length``) is a new model.
    """
    given = {k: v for k, v in _plain(cfg, "benchmark.finetune").items() if v is not None}  # null: the default
    recipe = {**FINETUNE_DEFAULTS, "max_length": cfg.train.max_length, **given}
    if not _finetune_used(cfg):
        return recipe
    for name, (ok, allowed) in _FINETUNE_CHECKS.items():
        if not ok(recipe[name]):
            raise ConfigError(f"benchmark.finetune.{name} must be {allowed}, got {recipe[name]!r}")
    try:
        OptimConfig(lr=recipe["lr"], weight_decay=recipe["weight_decay"], schedule=recipe["schedule"], warmup_ratio=recipe["warmup_ratio"])
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e).replace("optim.", "benchmark.finetune.")) from e
    return recipe


def make_setup(cfg: DictConfig, run: RunDir) -> Setup:
    """Validate the config and build the components; raises one :class:`ConfigError` that lists
    every problem (the config-level checks of :mod:`unlearn.validation` and the constructors')."""
    problems = validate(cfg, Problems())
    built: dict[str, Any] = {}

    def make(name: str, fn: Any, key: str | None = None) -> None:
        with problems.collect(key):
            built[name] = fn()

    make("finetune", lambda: finetune_recipe(cfg), "benchmark.finetune")
    make("optim", lambda: OptimConfig(**_plain(cfg, "optim")), "optim")
    train = _plain_or_empty(cfg, "train")
    make("step", lambda: StepConfig(
        accumulate=train.get("accumulate", 1),
        stream=train.get("stream"),
        clip_norm=train.get("clip_norm", 1.0),
        retain_ema=train.get("retain_ema"),
        diagnostics=train.get("diagnostics", True),
        guard=DivergenceGuard(max_abs_loss=train.get("max_abs_loss", 1e4)),  # it checks the value and names the key
    ), "train")
    make("loop", lambda: LoopConfig(**_plain(cfg, "trainer")), "trainer")
    if "loop" in built and (started := launched()) is not None:  # torchrun / srun: one device per process
        with problems.collect():
            built["loop"] = built["loop"].launched_as(started)
    make("fmt", lambda: PromptFormat(**_plain(cfg, "model.prompt")), "model.prompt")
    make("device", lambda: resolve_device(str(cfg.model.get("device", "auto"))), "model.device")
    make("dtype", lambda: resolve_dtype(str(cfg.model.get("dtype", "auto")), built.get("device", torch.device("cpu"))), "model.dtype")
    if cfg.model.get("lora"):
        from unlearn.models.lora import lora_config

        with problems.collect("model.lora"):
            lora_config(cfg.model.lora)  # bad adapter settings fail here, before any model is built
    with problems.collect("model.gradient_checkpointing"):
        wanted(cfg)  # must be a bool
    make("combiner", lambda: _combiner(cfg), "combiner")
    make("spec", lambda: build(cfg, "model.spec"), "model.spec")
    make("data", lambda: build(cfg, "benchmark.data"), "benchmark.data")
    make("evaluator", lambda: build(cfg, "benchmark.eval"), "benchmark.eval")
    make("collapse", lambda: build(cfg, "benchmark.collapse"), "benchmark.collapse")
    make("objective", lambda: _objective(cfg) if cfg.task == "unlearn" else None)
    make("callbacks", lambda: [build(cfg, f"train.callbacks.{i}") for i in range(len(cfg.train.get("callbacks") or []))], "train.callbacks")
    check_step_together(built.get("step"), built.get("combiner"), built.get("objective"), problems)
    if "step" in built and "loop" in built:
        with problems.collect():
            check_stream(built["step"], built["loop"].world_size)  # train.stream=true with data parallelism
    if "loop" in built and is_sharded(built["loop"].strategy) and cfg.task == "unlearn":
        rate = cfg.smoothing.get("rate") if cfg.get("smoothing") else None
        for msg in check_sharded(built.get("combiner"), built.get("objective"), bool(cfg.model.get("lora")), rate):
            problems.add(msg)
    problems.raise_if_any()
    return Setup(cfg=cfg, run=run, cache=Cache(cfg.paths.cache_dir), **built)  # type: ignore[arg-type]


def _plain_or_empty(cfg: DictConfig, key: str) -> dict[str, Any]:
    try:
        return _plain(cfg, key)
    except Exception:  # an unresolvable value: the validation pass has named it
        return {}


def _combiner(cfg: DictConfig) -> Combiner:
    combiner = build(cfg, "combiner")
    if not isinstance(combiner, Combiner):
        raise ConfigError(f"combiner: _target_ must build a unlearn.combiners.Combiner, got {type(combiner).__name__}")
    return combiner
