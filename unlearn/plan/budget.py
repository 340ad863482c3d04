"""The memory plan of one unlearning run, per GPU, from the config alone (no weight is loaded).

The model is built on the meta device (shapes, no memory) to count its parameters and the ones
that train (all of them, a LoRA adapter, RMU's few down-projections); the rest is arithmetic:

- **weights**: every parameter at the model's dtype (``model.dtype=auto`` is bf16 on a GPU); a
  LoRA adapter is kept in fp32 by PEFT.
- **optimizer state**: AdamW's two moments per trainable parameter, in the parameter's dtype.
- **gradient buffers**: :data:`GRAD_BUFFERS` copies of the trainable parameters, by combiner and
  step path (one device and one micro-batch, accumulation, data parallel).
- **reference**: KL and RMU's retain term keep a copy of the trainable weights (nothing under
  LoRA: the reference is the base with the adapter off); NPO keeps one float per forget row.
- **activations**: see :func:`activation_bytes` (an estimate; with and without checkpointing).

With ``plan.sharded`` (``trainer=fsdp``) weights, gradients, optimizer
state and the reference copy divide by ``plan.gpus``; data-parallel replication keeps them whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unlearn.config import ConfigError, build, to_plain
from unlearn.losses import KL, NPO, RMU, RMURetain
from unlearn.models.load import DTYPES
from unlearn.plan.arch import meta_model, model_config

GiB = 2**30

#: Gradient buffers (each as large as the trainable parameters) alive at the peak of one step,
#: by combiner class and step path: ``single`` (one device, one micro-batch: the second task's
#: gradient is folded into the first's buffer as it arrives), ``accumulate`` (train.accumulate > 1)
#: and ``ddp`` (more than one GPU: each task's gradient must be reduced before combining). The
#: buffered global PCGrad variants keep both tasks' gradients and the update. Adjust here when the
#: gradient plumbing (unlearn/training/gradients.py) changes.
GRAD_BUFFERS: dict[str, dict[str, int]] = {
    "default": {"single": 1, "accumulate": 2, "ddp": 2},
    "PCGradGlobal": {"single": 3, "accumulate": 3, "ddp": 3},
    "PCGradSymmetric": {"single": 3, "accumulate": 3, "ddp": 3},
}

#: bytes of one optimizer-state entry per trainable parameter, in units of its own size (AdamW)
OPTIMIZER_STATES = 2


@dataclass(frozen=True)
class Options:
    """What a plan is for beyond the config: the number of GPUs and whether the states are sharded."""

    gpus: int = 1
    sharded: bool = False


@dataclass(frozen=True)
class Plan:
    """Bytes per GPU of one unlearning run; ``rows()`` is the printed table."""

    model: str
    source: str
    dtype: str
    params: int
    trainable: int
    trainable_kind: str
    combiner: str
    path: str
    buffers: int
    batch: str
    gpus: int
    sharded: bool
    checkpointing: bool
    weights: int
    optimizer: int
    gradients: int
    reference: int
    reference_kind: str
    activations: int
    activations_other: int  # with checkpointing toggled, for the table

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.gradients + self.reference + self.activations

    def rows(self) -> list[tuple[str, int, str]]:
        other = "on" if not self.checkpointing else "off"
        return [
            ("weights", self.weights, f"{self.params / 1e9:.3g}B parameters, {self.dtype}"),
            (
                "optimizer state",
                self.optimizer,
                f"AdamW, 2 moments of {self.trainable / 1e6:.4g}M trainable ({self.trainable_kind})",
            ),
            (
                "gradient buffers",
                self.gradients,
                f"{self.buffers} x trainable: combiner {self.combiner}, path {self.path}",
            ),
            ("reference", self.reference, self.reference_kind),
            (
                "activations",
                self.activations,
                f"batch {self.batch}, checkpointing {'on' if self.checkpointing else 'off'} (with it {other}: "
                f"{self.activations_other / GiB:.2f} GiB)",
            ),
        ]


def dtype_bytes(cfg: DictConfig) -> tuple[int, str]:
    """Bytes per weight on a GPU: ``model.dtype=auto`` is bf16 there."""
    name = str(OmegaConf.select(cfg, "model.dtype", default="auto"))
    if name == "auto":
        return 2, "bf16"
    if name not in DTYPES:
        raise ConfigError(f"model.dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name].itemsize, name


def _dims(c: Any) -> tuple[int, int, int, int, int]:
    """hidden, kv width, intermediate, layers, vocab of a transformers config."""
    h = int(c.hidden_size)
    heads = int(c.num_attention_heads)
    kv = int(getattr(c, "num_key_value_heads", None) or heads) * (h // heads)
    inter = int(getattr(c, "intermediate_size", None) or getattr(c, "ffn_dim", None) or 4 * h)
    return h, kv, inter, int(c.num_hidden_layers), int(c.vocab_size)


def layer_elements(c: Any) -> int:
    """Activation elements a decoder layer saves for the backward pass, per token:
    ``7h + 2·kv + 4·I`` (two norms' input and output 4h; attention's q, k, v and output 2h + 2kv
    and the output projection's input h; the MLP's gate, its activation, up and their product 4I).
    Assumes memory-efficient attention (sdpa/flash: no T×T scores are kept)."""
    h, kv, inter, _, _ = _dims(c)
    return 7 * h + 2 * kv + 4 * inter


def logits_bytes(c: Any, act: int, kl: bool = False) -> int:
    """Bytes per token of the LM head and the loss: logits (``act``), their fp32 copy (unless they
    are fp32 already) and the saved fp32 log-softmax; KL adds the reference logits and their
    log-softmax."""
    vocab = _dims(c)[4]
    per = vocab * (act + (4 if act < 4 else 0) + 4)
    return per + (vocab * (act + 4) if kl else 0)


def activation_bytes(c: Any, act: int, forwards: list[tuple[int, int, bool, bool]], checkpointing: bool) -> int:
    """Peak activation bytes of the step's largest task.

    ``forwards``: per task ``(tokens, layers run, LM head run, KL reference)``. The tasks' backward
    passes run one after another, so the peak is the largest task's. Without checkpointing a task
    keeps every layer's activations and its logits at once:
    ``tokens·(layers·(7h+2kv+4I)·act + logits)``. With it, only each layer's input is kept
    (``tokens·layers·h·act``) plus, at a time, either the logits or one recomputed layer.
    """
    h = _dims(c)[0]
    peak = 0
    for tokens, layers, head, kl in forwards:
        layer = layer_elements(c) * act
        head_b = logits_bytes(c, act, kl) if head else 0
        if checkpointing:
            task = tokens * (layers * h * act + max(layer, head_b))
        else:
            task = tokens * (layers * layer + head_b)
        peak = max(peak, task)
    return peak


def _component_forward(comp: Any, tokens: int, n_layers: int) -> tuple[int, int, bool, bool]:
    if isinstance(comp, (RMU, RMURetain)):  # the forward stops after the hooked layer: no LM head
        # RMU's layer may still be None here (its prepare() would say so); int() fails on it first
        return tokens, int(comp.layer) + 1, False, False  # type: ignore[arg-type]
    return tokens, n_layers, True, isinstance(comp, KL)


def _trainable(cfg: DictConfig, model: Any, forget: Any) -> tuple[Any, list[Any], str]:
    kind = "all parameters"
    lora = to_plain(OmegaConf.select(cfg, "model.lora", default=None))
    if lora:
        from unlearn.models.lora import apply_lora

        model = apply_lora(model, lora)
        kind = f"LoRA r={lora.get('r', 8)}"
    params = [p for p in model.parameters() if p.requires_grad]
    if isinstance(forget, RMU):
        params = [p for _, p in forget.trained(model)]
        kind = f"RMU {forget.update_params} of layers {forget.update_layers}" + (" (LoRA)" if lora else "")
    return model, params, kind


def _reference(forget: Any, retain: Any, lora: bool, train_bytes: int) -> tuple[int, str]:
    """Bytes and description of what keeps the starting model (see unlearn.models.reference)."""
    if isinstance(retain, (KL, RMURetain)):
        if lora:
            return 0, "LoRA base with the adapter off (no copy)"
        return train_bytes, f"copy of the trainable weights ({type(retain).__name__})"
    if isinstance(forget, NPO):
        return 0, "NPO log-prob cache: one float per forget row, host memory"
    return 0, "none (no loss needs the starting model)"


def step_path(cfg: DictConfig, gpus: int) -> str:
    if gpus > 1:
        return "ddp"
    return "accumulate" if int(OmegaConf.select(cfg, "train.accumulate", default=1) or 1) > 1 else "single"


def make_plan(cfg: DictConfig, options: Options | None = None) -> Plan:
    """The memory plan of ``cfg`` (an unlearning job's composed config) on ``options.gpus`` GPUs."""
    opt = options or Options()
    spec = build(cfg, "model.spec")
    config, source = model_config(cfg, spec)
    act, dtype = dtype_bytes(cfg)
    forget, retain = build(cfg, "forget"), build(cfg, "retain")
    smoothing = build(cfg, "smoothing")
    model = meta_model(config)
    params = sum(p.numel() for p in model.parameters())
    model, trained, kind = _trainable(cfg, model, forget)
    lora = bool(to_plain(OmegaConf.select(cfg, "model.lora", default=None)))
    n_train = sum(p.numel() for p in trained)
    train_bytes = n_train * (4 if lora else act)  # PEFT keeps the adapter in fp32
    adapter = n_train * 4 if lora else 0
    combiner = str(cfg.combiner._target_).rsplit(".", 1)[-1]
    path = step_path(cfg, opt.gpus)
    buffers = 1 if retain is None or forget is None else GRAD_BUFFERS.get(combiner, GRAD_BUFFERS["default"])[path]
    if OmegaConf.select(cfg, "train.retain_ema", default=None):
        buffers += 1  # the EMA of g_r
    ref_bytes, ref_kind = _reference(forget, retain, lora, train_bytes)
    bs, length = int(cfg.train.batch_size), int(cfg.train.max_length)
    group = int(smoothing.K) if getattr(smoothing, "active", False) else 1  # SGA: forget + K-1 normal rows
    n_layers = _dims(config)[3]
    forwards = [
        _component_forward(c, bs * length * n, n_layers) for c, n in ((forget, group), (retain, 1)) if c is not None
    ]
    ckpt = bool(OmegaConf.select(cfg, "model.gradient_checkpointing", default=False))
    share = opt.gpus if opt.sharded else 1
    weights = params * act + adapter
    return Plan(
        model=str(cfg.model.name),
        source=source,
        dtype=dtype,
        params=params,
        trainable=n_train,
        trainable_kind=kind,
        combiner=combiner,
        path=path,
        buffers=buffers,
        batch=f"{bs}x{length}" + (f" (x{group} forget rows with SGA)" if group > 1 else ""),
        gpus=opt.gpus,
        sharded=opt.sharded,
        checkpointing=ckpt,
        weights=math.ceil(weights / share),
        optimizer=math.ceil(OPTIMIZER_STATES * train_bytes / share),
        gradients=math.ceil(buffers * train_bytes / share),
        reference=math.ceil(ref_bytes / share),
        reference_kind=ref_kind,
        activations=activation_bytes(config, act, forwards, ckpt),
        activations_other=activation_bytes(config, act, forwards, not ckpt),
    )


def with_overrides(cfg: DictConfig, overrides: dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with dotted keys set (the what-ifs of a plan that does not fit)."""
    out = cfg.copy()
    for key, value in overrides.items():
        OmegaConf.update(out, key, value, force_add=True, merge=False)
    return out
