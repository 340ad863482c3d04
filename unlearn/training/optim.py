"""Optimizer and learning-rate schedule for the manual-optimisation step."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import ConstantLR, CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from unlearn.schema import SCHEDULES, OptimConfig

__all__ = ["SCHEDULES", "OptimConfig", "build_optimizer", "build_scheduler"]


def build_scheduler(opt: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LRScheduler:
    """A linear warm-up over ``round(warmup_ratio * total)`` steps, then ``cfg.schedule`` down to 0 at ``total``.

    Torch's schedulers rather than ``transformers.get_scheduler``: the latter's warm-up gives the
    first step a learning rate of 0, where this one (as before) starts at ``1/warm`` and reaches the
    full rate on the last warm-up step: multiplier ``(step + 1) / warm``, then ``1 - t/T`` (linear) or
    ``(1 + cos(pi t/T)) / 2`` (cosine) with ``t = step - warm``, ``T = total - warm``.
    """
    total = max(int(total_steps), 1)
    warm = int(round(cfg.warmup_ratio * total))
    decay_steps = max(1, total - warm)
    decay: LRScheduler
    if cfg.schedule == "linear":
        decay = LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=decay_steps)
    elif cfg.schedule == "cosine":
        decay = CosineAnnealingLR(opt, T_max=decay_steps, eta_min=0.0)
    else:
        decay = ConstantLR(opt, factor=1.0, total_iters=0)
    if not warm:
        return decay
    ramp = LinearLR(opt, start_factor=1.0 / warm, end_factor=1.0, total_iters=max(warm - 1, 1))
    return SequentialLR(opt, [ramp, decay], milestones=[warm])


def build_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig, total_steps: int) -> Any:
    beta1, beta2 = cfg.betas  # OptimConfig checked there are two
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(beta1, beta2))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": build_scheduler(opt, cfg, total_steps), "interval": "step"}}
