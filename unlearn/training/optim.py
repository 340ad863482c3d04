"""Optimizer and learning-rate schedule for the manual-optimisation step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

SCHEDULES = ("constant", "linear", "cosine")


@dataclass
class OptimConfig:
    """AdamW with a warm-up and a ``constant``, ``linear`` or ``cosine`` decay to 0."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "linear"
    warmup_ratio: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"optim.lr must be > 0 and finite, got {self.lr!r}")
        wd = self.weight_decay
        if isinstance(wd, bool) or not isinstance(wd, (int, float)) or not 0 <= wd < math.inf:  # nan fails too
            raise ValueError(f"optim.weight_decay must be >= 0 and finite, got {wd!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` of ``total``."""
    warm = int(round(cfg.warmup_ratio * total))
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant" or total <= warm:
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total - warm))
    if cfg.schedule == "linear":
        return max(0.0, 1.0 - progress)
    import math

    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig, total_steps: int) -> Any:
    total = max(int(total_steps), 1)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, cfg))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
