"""Representation Misdirection for Unlearning (Li et al. 2024, "The WMDP Benchmark"): steer the
hidden states of one layer on forget data toward a fixed random direction, keep them on retain data.

The hidden state ``h_k`` is the output of decoder layer ``k`` (``model.model.layers[k]``), read with
a forward hook that also stops the forward pass there: the layers above ``k`` are never run.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from unlearn.config import ConfigError
from unlearn.hooks import Component
from unlearn.losses.common import Batch, answer_mask, require_number
from unlearn.models.reference import is_peft
from unlearn.rules import is_int


class _Stop(Exception):
    """Raised by the capture hook once layer ``k`` has produced its output."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM (also through a PEFT wrapper)."""
    hf: Any = model  # get_decoder is transformers' API, not nn.Module's
    decoder = hf.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"RMU needs a decoder with a .layers list (Llama-style models); {type(model).__name__} has none"
        )
    return layers


def hidden_at(layer: nn.Module, forward: Callable[..., Any], batch: Batch) -> Tensor:
    """``h_k [B, T, H]``: the output of ``layer`` when ``forward(**inputs)`` runs on ``batch``."""
    seen: list[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        seen.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError("the hooked layer did not run during the forward pass")
    return seen[0]


def masked_mse(h: Tensor, target: Tensor, labels: Tensor) -> Tensor:
    """Mean squared error over the hidden dimension and a sample's labelled positions, ``[B]``."""
    per_token = ((h.float() - target.float()) ** 2).mean(-1)
    mask = answer_mask(labels)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def _check_layer(value: Any, n: int, key: str) -> int:
    if not is_int(value) or not 0 <= value < n:
        raise ConfigError(
            f"{key} must be a decoder layer index in [0, {n - 1}] (the model has {n} layers), got {value!r}"
        )
    return value


def _int(value: Any, key: str) -> int:
    if not is_int(value):
        raise ValueError(f"{key} must be an integer layer index, got {value!r}")
    return value


def _int_or_none(value: Any, key: str) -> int | None:
    return None if value is None else _int(value, key)


class RMU(Component):
    """Forget loss ``‖h_k(x_f) − c·u‖²`` per sample (MSE over hidden units and answer tokens).

    ``u`` is a fixed random unit vector (uniform entries, normalised, as in the WMDP code; seeded),
    ``c`` the steering ``coefficient``. :meth:`prepare` freezes every parameter except the
    ``update_params`` (names relative to a layer, matched as prefixes: ``mlp.down_proj``) of the
    ``update_layers``; under LoRA, the adapter's tensors inside those modules.
    """

    def __init__(
        self,
        layer: int = 7,
        coefficient: float = 2.0,
        update_layers: Sequence[int] = (5, 6, 7),
        update_params: Sequence[str] = ("mlp.down_proj",),
        seed: int = 0,
    ) -> None:
        self.layer = _int_or_none(layer, "forget.layer")
        self.coefficient = require_number(coefficient, "forget.coefficient", 0.0)
        self.update_layers = [_int_or_none(i, "forget.update_layers") for i in update_layers]
        if not self.update_layers:
            raise ValueError("forget.update_layers must list at least one layer index, got []")
        above = [i for i in self.update_layers if i is not None and self.layer is not None and i > self.layer]
        if above:
            raise ValueError(
                f"forget.update_layers {above} lie above forget.layer={self.layer}: the forward pass stops at "
                "forget.layer, where RMU reads the activations, so those layers would get no gradient and never "
                f"change while counted as trained; list layers <= {self.layer}"
            )
        if isinstance(update_params, str) or not update_params:
            raise ValueError(
                "forget.update_params must be a non-empty list of parameter names inside a layer (e.g. "
                f"[mlp.down_proj]), got {update_params!r}"
            )
        self.update_params = [str(p) for p in update_params]
        self.seed = int(seed)
        self._control: Tensor | None = None

    def __repr__(self) -> str:
        return (
            f"RMU(layer={self.layer}, coefficient={self.coefficient}, update_layers={self.update_layers}, "
            f"update_params={self.update_params})"
        )

    def trained(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The parameters RMU trains; error naming the keys when the selection is empty."""
        layers = decoder_layers(model)
        peft = is_peft(model)  # then only the adapter's tensors may train
        out = []
        for listed in self.update_layers:
            i = _check_layer(listed, len(layers), "forget.update_layers")
            for name, p in layers[i].named_parameters():
                if any(name == q or name.startswith(q + ".") for q in self.update_params) and (
                    p.requires_grad or not peft
                ):
                    out.append((f"layers.{i}.{name}", p))
        if not out:
            raise ConfigError(
                f"forget.update_params {self.update_params} select no trainable parameter in layers "
                f"{self.update_layers}"
            )
        return out

    def prepare(self, ctx: Any) -> None:
        model = ctx.model
        _check_layer(self.layer, len(decoder_layers(model)), "forget.layer")
        keep = {id(p) for _, p in self.trained(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        ref = next(model.parameters())
        gen = torch.Generator().manual_seed(self.seed)
        u = torch.rand(int(model.config.hidden_size), generator=gen)
        self._control = (self.coefficient * u / u.norm()).to(device=ref.device, dtype=ref.dtype)

    @property
    def control(self) -> Tensor:
        """``c·u``, the steering target ``[H]``."""
        if self._control is None:
            raise RuntimeError(
                "forget=rmu needs prepare(ctx) before training (it picks the layer and trained parameters)"
            )
        return self._control

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        control = self.control
        layers = decoder_layers(model)
        h = hidden_at(layers[_check_layer(self.layer, len(layers), "forget.layer")], model, batch)
        return masked_mse(h, control.expand_as(h), batch["labels"])


class RMURetain(Component):
    """RMU's retain partner ``‖h_k(x_r) − h_k^ref(x_r)‖²`` per sample, the reference being the
    frozen starting model (:class:`~unlearn.models.reference.Reference`: a copy of the few
    trained tensors, or the LoRA base). ``layer`` defaults to the forget loss's layer in config."""

    runs_reference = True  # runs the frozen starting model during training (see unlearn.training.fsdp.check_sharded)

    def __init__(self, layer: int | None = None) -> None:
        if layer is None:
            raise ValueError(
                "retain.layer must be set to a decoder layer index (retain=rmu reads forget.layer when forget=rmu)"
            )
        self.layer = _int(layer, "retain.layer")
        self._reference: Any = None

    def __repr__(self) -> str:
        return f"RMURetain(layer={self.layer})"

    def prepare(self, ctx: Any) -> None:
        _check_layer(self.layer, len(decoder_layers(ctx.model)), "retain.layer")
        ctx.reference.snapshot()  # after RMU's prepare froze the rest: only its tensors are copied
        self._reference = ctx.reference

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        if self._reference is None:
            raise RuntimeError("retain=rmu needs prepare(ctx) before training (it holds the reference model)")
        layer = decoder_layers(model)[self.layer]  # the reference runs the same modules
        with torch.no_grad():
            h_ref = hidden_at(layer, self._reference, batch)
        return masked_mse(hidden_at(layer, model, batch), h_ref, batch["labels"])
