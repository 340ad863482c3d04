"""Everything a job needs that is cheap to build, built and checked before any model exists."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unlearn.cache import Cache
from unlearn.combiners import Combiner
from unlearn.config import ConfigError, build, to_plain, validate
from unlearn.data.format import PromptFormat
from unlearn.losses.objective import Objective
from unlearn.models.load import resolve_device, resolve_dtype
from unlearn.rundir import RunDir
from unlearn.smoothing.sga import NoSmoothing
from unlearn.training.fit import LoopConfig
from unlearn.training.module import DivergenceGuard, StepConfig
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
    finetune: dict[str, Any]
    cache: Cache
    device: torch.device
    dtype: torch.dtype
    callbacks: list[Any]

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


def make_setup(cfg: DictConfig, run: RunDir) -> Setup:
    """Validate the config and build the components; raises :class:`ConfigError` on bad input."""
    validate(cfg)
    try:
        optim = OptimConfig(**_plain(cfg, "optim"))
        train = _plain(cfg, "train")
        step = StepConfig(
            accumulate=train.get("accumulate", 1),
            clip_norm=train.get("clip_norm", 1.0),
            retain_ema=train.get("retain_ema"),
            diagnostics=train.get("diagnostics", True),
            guard=DivergenceGuard(max_abs_loss=float(train.get("max_abs_loss", 1e4))),
        )
        loop = LoopConfig(**_plain(cfg, "trainer"))
        fmt = PromptFormat(**_plain(cfg, "model.prompt"))
        device = resolve_device(str(cfg.model.get("device", "auto")))
        dtype = resolve_dtype(str(cfg.model.get("dtype", "auto")), device)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e
    combiner = build(cfg, "combiner")
    if not isinstance(combiner, Combiner):
        raise ConfigError(f"combiner: _target_ must build a unlearn.combiners.Combiner, got {type(combiner).__name__}")
    return Setup(
        cfg=cfg,
        run=run,
        spec=build(cfg, "model.spec"),
        fmt=fmt,
        data=build(cfg, "benchmark.data"),
        evaluator=build(cfg, "benchmark.eval"),
        objective=_objective(cfg) if cfg.task == "unlearn" else None,
        combiner=combiner,
        optim=optim,
        step=step,
        loop=loop,
        finetune=_plain(cfg, "benchmark.finetune"),
        cache=Cache(cfg.paths.cache_dir),
        device=device,
        dtype=dtype,
        callbacks=[build(cfg, f"train.callbacks.{i}") for i in range(len(cfg.train.get("callbacks") or []))],
    )
