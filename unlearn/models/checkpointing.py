"""Activation (gradient) checkpointing: ``model.gradient_checkpointing=true``.

Each decoder layer keeps only its input during the forward pass and recomputes its activations
during the backward pass (Chen et al., 2016, "Training Deep Nets with Sublinear Memory Cost"):
about one extra forward per backward, for activation memory that grows with one layer instead of
all of them. The gradients are the same (the recomputation is the same arithmetic). Hugging Face's
implementation runs only in train mode and without the KV cache, so :func:`checkpointing` sets
``use_cache=False`` for the duration and restores it (evaluation generates with the cache again).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf
from torch import nn

from unlearn.config import ConfigError
from unlearn.models.reference import is_peft


def wanted(cfg: DictConfig) -> bool:
    """``model.gradient_checkpointing`` as a bool; anything else is a :class:`ConfigError`."""
    value = OmegaConf.select(cfg, "model.gradient_checkpointing", default=False)
    if not isinstance(value, bool):
        raise ConfigError(f"model.gradient_checkpointing must be true or false, got {value!r}")
    return value


def _base(model: nn.Module) -> Any:
    """The transformers model (under a PEFT wrapper, its base). Typed ``Any``: what is called on it
    (``gradient_checkpointing_enable``, ``get_input_embeddings``...) is transformers' API, which
    ``nn.Module`` does not declare."""
    wrapper: Any = model
    return wrapper.get_base_model() if is_peft(model) else model


def _configs(model: nn.Module) -> list[Any]:
    base = _base(model)
    return [
        c
        for c in {id(c): c for c in (getattr(model, "config", None), getattr(base, "config", None))}.values()
        if c is not None
    ]


@contextmanager
def checkpointing(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Turn activation checkpointing on for the block (a no-op when ``enabled`` is false).

    Non-reentrant checkpointing (``use_reentrant=False``): it handles keyword inputs and frozen
    embeddings, and hooks (RMU's layer capture) see the same forward. Under LoRA the embedding
    output is made to require grad as well (``enable_input_require_grads``), which the reentrant
    variant needs and PEFT recommends, so switching variants cannot silently drop the adapter's
    gradients.
    """
    if not enabled:
        yield model
        return
    base = _base(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"model.gradient_checkpointing=true, but {type(base).__name__} does not support gradient checkpointing"
        )
    configs = _configs(model)
    saved = [getattr(c, "use_cache", None) for c in configs]
    for c in configs:
        c.use_cache = False
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns there
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # transformers' own input-grad hook is a local closure: a model holding it cannot be pickled,
    # and trainer=ddp spawns its workers with a pickled copy. Ours is a module-level function.
    base.disable_input_require_grads()
    hook = base.get_input_embeddings().register_forward_hook(_require_grad) if is_peft(model) else None
    try:
        yield model
    finally:
        if hasattr(base, "activation_checkpointing_disable"):
            base.activation_checkpointing_disable()
        else:
            base.gradient_checkpointing_disable()
        if hook is not None:
            hook.remove()
        for c, v in zip(configs, saved, strict=True):
            c.use_cache = v


def _require_grad(module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook: the embedding output requires grad, so gradients reach a frozen base's adapters
    through every checkpointed layer (PEFT's ``enable_input_require_grads``)."""
    output.requires_grad_(True)
