"""The job: everything a run needs that is cheap to build, built from the config and checked
before any model exists. The phases (:mod:`unlearn.phases`) and the pipeline (:mod:`unlearn.pipeline`)
read these typed parts, never the raw config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from unlearn.cache import Cache
from unlearn.combiners import Combiner
from unlearn.config import ConfigError, build, to_plain
from unlearn.data.format import PromptFormat
from unlearn.evaluator import Evaluator
from unlearn.losses.objective import Objective
from unlearn.models.checkpointing import wanted
from unlearn.models.load import resolve_device, resolve_dtype
from unlearn.resume import config_hash
from unlearn.rules import problems_of
from unlearn.rundir import RunDir
from unlearn.schema import FinetuneConfig, LoopConfig, OptimConfig, TrainConfig
from unlearn.smoothing.sga import NoSmoothing
from unlearn.training.fsdp import check_sharded, is_sharded
from unlearn.training.launch import launched
from unlearn.training.module import StepConfig, check_stream
from unlearn.validation import Problems, check_step_together, validate

Names = Sequence[str] | str | None


@dataclass(frozen=True)
class ModelSource:
    """``benchmark.target`` or ``benchmark.oracle``: a given checkpoint, a model fine-tuned on
    ``finetune_on`` (and cached), or (target only) the base model; the oracle may instead be a
    saved evaluation (``eval_file``)."""

    role: str
    path: str | None = None
    finetune_on: tuple[str, ...] = ()
    eval_file: str | None = None

    @property
    def finetunes(self) -> bool:
        """A path, or an empty ``finetune_on``, means no fine-tune."""
        return not self.path and bool(self.finetune_on)


@dataclass(frozen=True)
class Roles:
    """``benchmark.roles``: the splits each task of unlearning draws from."""

    forget: Names = None
    retain: Names = None
    normal_pool: Names = None


@dataclass
class Job:
    run: RunDir
    task: str
    bench: str
    seed: int
    spec: Any
    fmt: PromptFormat
    data: Any
    evaluator: Evaluator
    objective: Objective | None
    combiner: Combiner
    train: TrainConfig
    optim: OptimConfig
    step: StepConfig
    loop: LoopConfig
    finetune: FinetuneConfig  # as configured; see finetune_max_length and finetune_key
    roles: Roles
    target: ModelSource
    oracle: ModelSource | None
    cache: Cache
    device: torch.device
    dtype: torch.dtype
    callbacks: list[Any]
    collapse: Any = None  # unlearn.eval.collapse.CollapseCheck of benchmark.collapse (None: not checked)
    lora: dict[str, Any] | None = None
    wandb: dict[str, Any] | None = None  # logger.wandb's settings (None: no W&B)
    gradient_checkpointing: bool = False
    save_model: bool = False
    resume: bool = True
    prompt: dict[str, Any] | None = None  # model.prompt, plain: part of the cache keys
    evaluator_config: dict[str, Any] | None = None  # benchmark.eval, plain: part of the evaluations' cache keys
    config_hash: str = ""

    @property
    def finetune_max_length(self) -> tuple[int, str]:
        """The fine-tuning recipe's max_length and the key that set it (``train.max_length`` when
        the recipe leaves it out)."""
        if self.finetune.max_length is not None:
            return self.finetune.max_length, "benchmark.finetune.max_length"
        return self.train.max_length, "train.max_length"

    def finetune_key(self) -> dict[str, Any]:
        """The effective recipe (``max_length`` filled in), as fine-tuned models' cache keys hold it:
        a changed ``train.max_length`` is a new model where the recipe leaves max_length out."""
        recipe = {**asdict(self.finetune), "max_length": self.finetune_max_length[0]}
        epochs = recipe["epochs"]  # an int in the keys written before the recipe was typed (epochs: 5)
        recipe["epochs"] = int(epochs) if float(epochs).is_integer() else epochs
        return recipe


def fine_tunes(task: str, target: ModelSource, oracle: ModelSource | None) -> bool:
    """Whether the job fine-tunes a target or oracle model (and so needs a fit ``benchmark.finetune``)."""
    if target.finetunes:
        return True
    # an eval_file replaces the oracle model, except in task=finetune, which builds it anyway
    return oracle is not None and oracle.finetunes and (not oracle.eval_file or task == "finetune")


def _source(cfg: DictConfig, role: str) -> ModelSource | None:
    node = OmegaConf.select(cfg, f"benchmark.{role}")
    if node is None:
        return None
    names = to_plain(node.get("finetune_on")) or []
    path, eval_file = node.get("path"), node.get("eval_file")
    return ModelSource(role, str(path) if path else None, tuple(names), str(eval_file) if eval_file else None)


def _build_objective(cfg: DictConfig) -> Objective | None:
    forget = build(cfg, "forget")
    retain = build(cfg, "retain")
    smoothing = build(cfg, "smoothing") or NoSmoothing()
    if forget is None and retain is None:
        raise ConfigError("forget and retain are both 'none': choose at least one loss (e.g. forget=ga)")
    if forget is None and getattr(smoothing, "active", False):
        raise ConfigError("smoothing is on (smoothing.rate != 0) but forget=none: smoothing weights the forget loss")
    return Objective(forget=forget, retain=retain, smoothing=smoothing)


def _combiner(cfg: DictConfig) -> Combiner:
    combiner = build(cfg, "combiner")
    if not isinstance(combiner, Combiner):
        raise ConfigError(f"combiner: _target_ must build a unlearn.combiners.Combiner, got {type(combiner).__name__}")
    return combiner


def _evaluator(cfg: DictConfig) -> Evaluator:
    """``benchmark.eval`` built and checked now: a wrong ``_target_`` would otherwise surface only
    after the target model is fine-tuned or the unlearning has run."""
    evaluator = build(cfg, "benchmark.eval")
    if not isinstance(evaluator, Evaluator):
        got = "nothing (it is not set)" if evaluator is None else f"a {type(evaluator).__qualname__}"
        raise ConfigError(
            "benchmark.eval: _target_ must build an unlearn.evaluator.Evaluator (a reports_diverged flag and "
            f"evaluate(ctx: EvalContext) -> record), got {got}"
        )
    return evaluator


def _typed(cfg: DictConfig, key: str) -> Any:
    """The section at ``key`` as its schema's dataclass (constructing it applies the field rules)."""
    return OmegaConf.to_object(OmegaConf.select(cfg, key))


def loop_of(cfg: DictConfig) -> LoopConfig:
    """The trainer settings this process runs: ``trainer``, and one device per process when
    torchrun or srun started the job."""
    loop = _typed(cfg, "trainer")
    started = launched()
    return loop if started is None else loop.launched_as(started)


def world_of(cfg: DictConfig) -> int:
    """The processes that will split this job's training stream."""
    return loop_of(cfg).world_size


def build_job(cfg: DictConfig, run: RunDir) -> Job:
    """Validate the config and build the job; raises one :class:`ConfigError` that lists every
    problem (the config-level checks of :mod:`unlearn.validation` and the constructors')."""
    problems = validate(cfg, Problems())
    built: dict[str, Any] = {}

    def make(name: str, fn: Any, key: str | None = None) -> None:
        with problems.collect(key):
            built[name] = fn()

    make("train", lambda: _typed(cfg, "train"), "train")
    make("optim", lambda: _typed(cfg, "optim"), "optim")
    make("loop", lambda: loop_of(cfg), "trainer")
    make("finetune", lambda: _typed(cfg, "benchmark.finetune"), "benchmark.finetune")
    if "train" in built:
        make("step", lambda: StepConfig.from_train(built["train"]), "train")
    make("target", lambda: _source(cfg, "target"), "benchmark.target")
    make("oracle", lambda: _source(cfg, "oracle"), "benchmark.oracle")
    if (
        "finetune" in built
        and built.get("target") is not None
        and fine_tunes(str(cfg.task), built["target"], built.get("oracle"))
    ):
        for why in problems_of(built["finetune"], "benchmark.finetune"):
            problems.add(why)
    make("fmt", lambda: PromptFormat(**(to_plain(OmegaConf.select(cfg, "model.prompt")) or {})), "model.prompt")
    make("device", lambda: resolve_device(str(cfg.model.get("device", "auto"))), "model.device")
    make(
        "dtype",
        lambda: resolve_dtype(str(cfg.model.get("dtype", "auto")), built.get("device", torch.device("cpu"))),
        "model.dtype",
    )
    if cfg.model.get("lora"):
        from unlearn.models.lora import lora_config

        with problems.collect("model.lora"):
            lora_config(cfg.model.lora)  # bad adapter settings fail here, before any model is built
    make("gradient_checkpointing", lambda: wanted(cfg), "model.gradient_checkpointing")
    make("combiner", lambda: _combiner(cfg), "combiner")
    make("spec", lambda: build(cfg, "model.spec"), "model.spec")
    make("data", lambda: build(cfg, "benchmark.data"), "benchmark.data")
    make("evaluator", lambda: _evaluator(cfg), "benchmark.eval")
    make("collapse", lambda: build(cfg, "benchmark.collapse"), "benchmark.collapse")
    make("objective", lambda: _build_objective(cfg) if cfg.task == "unlearn" else None)
    make(
        "callbacks",
        lambda: [build(cfg, f"train.callbacks.{i}") for i in range(len(cfg.train.get("callbacks") or []))],
        "train.callbacks",
    )
    _check_together(cfg, built, problems)
    problems.raise_if_any()
    roles = to_plain(OmegaConf.select(cfg, "benchmark.roles")) or {}
    return Job(
        run=run,
        task=str(cfg.task),
        bench=str(cfg.benchmark.name),
        seed=int(cfg.seed),
        cache=Cache(cfg.paths.cache_dir),
        roles=Roles(**roles),
        lora=to_plain(cfg.model.get("lora")) or None,
        wandb=to_plain(OmegaConf.select(cfg, "logger.wandb")),
        save_model=bool(cfg.get("save_model")),
        resume=bool(cfg.get("resume", True)),
        prompt=to_plain(cfg.model.get("prompt")),
        evaluator_config=to_plain(cfg.benchmark.get("eval")),
        config_hash=config_hash(cfg, built["loop"].world_size),
        **built,
    )


def _check_together(cfg: DictConfig, built: dict[str, Any], problems: Problems) -> None:
    """Rules across built parts: the step with the combiner and objective, streaming with the
    process count, sharding with the method."""
    check_step_together(built.get("step"), built.get("combiner"), built.get("objective"), problems)
    if "step" in built and "loop" in built:
        with problems.collect():
            check_stream(built["step"], built["loop"].world_size)  # train.stream=true with data parallelism
    if "loop" in built and is_sharded(built["loop"].strategy) and cfg.task == "unlearn":
        rate = cfg.smoothing.get("rate") if cfg.get("smoothing") else None
        for msg in check_sharded(built.get("combiner"), built.get("objective"), bool(cfg.model.get("lora")), rate):
            problems.add(msg)
