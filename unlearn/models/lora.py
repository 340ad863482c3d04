"""Training a LoRA adapter (PEFT) instead of the full model: ``model.lora={r: 8, alpha: 16}``.

With an adapter, the reference model of NPO, KL and RMU is the base model with the adapter
disabled (:class:`~unlearn.models.reference.Reference`): no copy of any weight is kept.
Saving (``save_model=true``) merges the adapter into the base weights.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping

from torch import nn

from unlearn.config import ConfigError, to_plain

KEYS = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none"}


def lora_config(cfg: Mapping[str, Any]) -> Any:
    """A ``peft.LoraConfig`` from the ``model.lora`` node; unknown keys and bad values name the key."""
    from peft import LoraConfig, TaskType

    given = dict(to_plain(cfg) or {})
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise ConfigError(f"model.lora: unknown keys {unknown} (allowed: {sorted(KEYS)})")
    c = {**KEYS, **given}
    if isinstance(c["r"], bool) or not isinstance(c["r"], int) or c["r"] < 1:
        raise ConfigError(f"model.lora.r must be an integer >= 1, got {c['r']!r}")
    if isinstance(c["alpha"], bool) or not isinstance(c["alpha"], (int, float)) or c["alpha"] <= 0:
        raise ConfigError(f"model.lora.alpha must be a number > 0, got {c['alpha']!r}")
    if isinstance(c["dropout"], bool) or not isinstance(c["dropout"], (int, float)) or not 0 <= c["dropout"] < 1:
        raise ConfigError(f"model.lora.dropout must be in [0, 1), got {c['dropout']!r}")
    targets = c["target_modules"]
    if isinstance(targets, str):
        targets = targets if targets == "all-linear" else [targets]
    if not targets:
        raise ConfigError(
            "model.lora.target_modules must name at least one module (e.g. [q_proj, v_proj]) or be 'all-linear'"
        )
    return LoraConfig(
        r=c["r"],
        lora_alpha=c["alpha"],  # type: ignore[arg-type]  # peft annotates int; a float works (scaling = alpha / r)
        lora_dropout=float(c["dropout"]),
        target_modules=targets,
        bias=c["bias"],
        task_type=TaskType.CAUSAL_LM,
    )


def apply_lora(model: nn.Module, cfg: Mapping[str, Any]) -> nn.Module:
    """Wrap ``model`` in a fresh LoRA adapter; only the adapter's tensors then require grad."""
    from peft import get_peft_model

    config = lora_config(cfg)
    try:
        with warnings.catch_warnings():  # transformers' deprecation notices that PEFT triggers
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:  # e.g. target modules not found in the model
        raise ConfigError(f"model.lora.target_modules: {e}") from e
