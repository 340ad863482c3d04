"""Stop ``python -m unlearn`` before any weight is loaded when the run cannot fit on its GPU.

On a CPU there is no check (host memory is the operating system's business), unless
``plan.gpu_memory_gb`` is set, which asks for a plan against that much GPU memory.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unlearn.config import ConfigError, to_plain
from unlearn.plan.budget import GiB, Options, Plan, make_plan, with_overrides
from unlearn.rules import is_int
from unlearn.validation import require


class WontFit(ConfigError):
    """The memory plan exceeds the GPU's memory; the message names options that would fit."""

    kind = "memory plan"


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes; None on a CPU (no check there)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def options(cfg: DictConfig) -> Options:
    """GPUs and sharding to plan for: ``plan.gpus`` (null: ``trainer.devices``), ``plan.sharded``."""
    gpus = OmegaConf.select(cfg, "plan.gpus", default=None)
    if gpus is None:
        devices = OmegaConf.select(cfg, "trainer.devices", default=1)
        gpus = (
            devices
            if is_int(devices) and devices > 0
            else len(devices)
            if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices)
            else 1
        )
    else:
        require(cfg, "plan.gpus")
    sharded = require(cfg, "plan.sharded")
    if sharded is None:  # follow the trainer: trainer=fsdp shards
        from unlearn.training.fsdp import is_sharded

        sharded = is_sharded(to_plain(OmegaConf.select(cfg, "trainer.strategy", default=None)))
    sharded = bool(sharded)
    return Options(gpus=int(gpus), sharded=sharded)


def budget(cfg: DictConfig, device: torch.device) -> tuple[int, int] | None:
    """``(total, usable)`` bytes per GPU (``plan.gpu_memory_gb`` or the device's), None: no check."""
    headroom = require(cfg, "plan.headroom")
    given = OmegaConf.select(cfg, "plan.gpu_memory_gb", default=None)
    total: int | None
    if given is not None:
        require(cfg, "plan.gpu_memory_gb")
        total = int(float(given) * GiB)
    else:
        total = device_memory(device)
        if total is None:
            return None
    return total, int(total * (1 - headroom))


def _fsdp(cfg: DictConfig, usable: int, opt: Options) -> tuple[int, Plan] | None:
    for n in (2, 4, 8, 16, 32, 64):
        if n > opt.gpus or not opt.sharded:
            p = make_plan(cfg, Options(gpus=n, sharded=True))
            if p.total <= usable:
                return n, p
    return None


def _smaller_batch(cfg: DictConfig, usable: int, opt: Options) -> tuple[str, Plan] | None:
    bs, acc = int(cfg.train.batch_size), int(cfg.train.get("accumulate") or 1)
    b = bs // 2
    while b >= 1:
        over = {"train.batch_size": b, "train.accumulate": math.ceil(bs * acc / b)}
        p = make_plan(with_overrides(cfg, over), opt)
        if p.total <= usable:
            return f"train.batch_size={b} train.accumulate={over['train.accumulate']}", p
        b //= 2
    return None


def _lora_option(cfg: DictConfig) -> dict[str, Any]:
    """The adapter to suggest: PEFT's default targets, or RMU's trained modules when forget=rmu."""
    params = OmegaConf.select(cfg, "forget.update_params", default=None)
    if params and "RMU" in str(OmegaConf.select(cfg, "forget._target_", default="")):
        return {"r": 8, "target_modules": sorted({str(p).rsplit(".", 1)[-1] for p in params})}
    return {"r": 8}


def _show(value: dict[str, Any]) -> str:
    return (
        "{" + ",".join(f"{k}:{'[' + ','.join(v) + ']' if isinstance(v, list) else v}" for k, v in value.items()) + "}"
    )


def alternatives(cfg: DictConfig, usable: int, opt: Options) -> list[str]:
    """One line per option: the option and its plan total per GPU, or why it does not suffice."""
    out = []

    def line(option: str, p: Plan | None, extra: str = "") -> str:
        if p is None:
            return f"  {option}: not enough on its own{extra}"
        verdict = "fits" if p.total <= usable else "not enough on its own"
        return f"  {option}: {p.total / GiB:.1f} GiB per GPU, {verdict}{extra}"

    if not cfg.model.get("gradient_checkpointing"):
        out.append(
            line(
                "model.gradient_checkpointing=true",
                make_plan(with_overrides(cfg, {"model.gradient_checkpointing": True}), opt),
            )
        )
    lora = _lora_option(cfg)
    if not cfg.model.get("lora"):
        try:
            out.append(
                line(
                    f"model.lora={_show(lora)}",
                    make_plan(with_overrides(cfg, {"model.lora": lora}), opt),
                    " (trains an adapter instead of the model)",
                )
            )
        except ConfigError as e:
            out.append(f"  model.lora={_show(lora)}: not applicable here ({e})")
    found = _fsdp(cfg, usable, opt)
    out.append(
        line(
            f"trainer=fsdp trainer.devices={found[0]}" if found else "trainer=fsdp (sharding over up to 64 GPUs)",
            found[1] if found else None,
        )
    )
    small = _smaller_batch(cfg, usable, opt)
    out.append(
        line(
            small[0] if small else "a smaller train.batch_size (down to 1, more train.accumulate)",
            small[1] if small else None,
            " (same effective batch)" if small else "",
        )
    )
    if not any(", fits" in o for o in out) and not (cfg.model.get("gradient_checkpointing") or cfg.model.get("lora")):
        try:
            both = make_plan(with_overrides(cfg, {"model.gradient_checkpointing": True, "model.lora": lora}), opt)
            out.append(line(f"model.gradient_checkpointing=true model.lora={_show(lora)} together", both))
        except ConfigError:
            pass
    return out


def describe(plan: Plan) -> str:
    lines = [
        f"memory plan per GPU for {plan.model} ({plan.source}; {plan.gpus} GPU{'s' if plan.gpus > 1 else ''}, "
        f"{'sharded' if plan.sharded else 'replicated'}):"
    ]
    for name, size, note in plan.rows():
        lines.append(f"  {name:<17} {size / GiB:8.2f} GiB  {note}")
    lines.append(f"  {'total':<17} {plan.total / GiB:8.2f} GiB")
    return "\n".join(lines)


def check_fits(cfg: DictConfig, device: torch.device) -> Plan | None:
    """Raise :class:`WontFit` when an unlearning job's plan exceeds the GPU; the plan otherwise
    (None when there is nothing to check: a CPU, ``plan.check=false``, another task)."""
    if cfg.get("task", "unlearn") != "unlearn" or not OmegaConf.select(cfg, "plan.check", default=True):
        return None
    opt = options(cfg)  # bad plan.* values are errors on a CPU too
    limits = budget(cfg, device)
    if limits is None:
        return None
    total, usable = limits
    plan = make_plan(cfg, opt)
    if plan.total <= usable:
        return plan
    raise WontFit(
        f"this run needs about {plan.total / GiB:.1f} GiB per GPU but the GPU has {total / GiB:.1f} GiB "
        f"({usable / GiB:.1f} GiB usable with plan.headroom={cfg.plan.headroom}); stopped before loading any weight.\n"
        f"{describe(plan)}\noptions that would make it fit:\n"
        + "\n".join(alternatives(cfg, usable, opt))
        + "\n(python -m unlearn.plan with the same overrides prints the plan; plan.check=false skips this check)"
    )
