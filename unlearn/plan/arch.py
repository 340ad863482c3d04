"""The architecture numbers of each preset model, shipped, so a memory plan needs no download.

The hub is often unreachable where plans are made (and gated models need a licence first), so the
handful of public numbers each paper model needs are kept here, checked in a test against the
parameter counts the models are known for. A local ``config.json`` (``model.spec.path`` or
``benchmark.target.path``) is read instead when there is one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from unlearn.config import ConfigError


@dataclass(frozen=True)
class Arch:
    """A decoder-only LM's shape: what parameter counts and activation sizes depend on."""

    model_type: str  # transformers' name: llama, mistral, phi, opt
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int = 4096  # OPT learns its position embeddings: they count as parameters

    def hf_config(self) -> Any:
        from transformers import AutoConfig

        kw: dict[str, Any] = {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
        }
        if self.model_type == "opt":
            kw.update(ffn_dim=self.intermediate_size, word_embed_proj_dim=self.hidden_size)
        else:
            kw.update(intermediate_size=self.intermediate_size, num_key_value_heads=self.num_kv_heads)
        if self.model_type == "phi":
            kw.update(partial_rotary_factor=0.5)
        return AutoConfig.for_model(self.model_type, **kw)


#: public facts of the preset models (their config.json on the hub), by hub id
ARCH: dict[str, Arch] = {
    # Mistral-7B-v0.1 underneath: 7.24B parameters
    "HuggingFaceH4/zephyr-7b-beta": Arch("mistral", 4096, 32, 32, 8, 14336, 32000, False, 32768),
    # 6.74B parameters (chat and base share the architecture)
    "meta-llama/Llama-2-7b-chat-hf": Arch("llama", 4096, 32, 32, 32, 11008, 32000, False, 4096),
    "meta-llama/Llama-2-7b-hf": Arch("llama", 4096, 32, 32, 32, 11008, 32000, False, 4096),
    # 8.03B parameters
    "meta-llama/Meta-Llama-3-8B-Instruct": Arch("llama", 4096, 32, 32, 8, 14336, 128256, False, 8192),
    # 1.42B parameters
    "microsoft/phi-1_5": Arch("phi", 2048, 24, 32, 32, 8192, 51200, False, 2048),
    # 2.65B parameters (output projection tied to the embeddings)
    "facebook/opt-2.7b": Arch("opt", 2560, 32, 32, 32, 10240, 50272, True, 2048),
    # 135M parameters, tied embeddings
    "HuggingFaceTB/SmolLM2-135M-Instruct": Arch("llama", 576, 30, 9, 3, 1536, 49152, True, 8192),
}


def _local_config(cfg: DictConfig) -> Path | None:
    """The config.json of the weights training starts from, when a local copy is named."""
    for key in ("benchmark.target.path", "model.spec.path", "plan.config"):
        value = OmegaConf.select(cfg, key, default=None)
        if value:
            path = Path(str(value)).expanduser()
            path = path / "config.json" if path.is_dir() else path
            if path.exists():
                return path
            if key == "plan.config":
                raise ConfigError(f"plan.config: {path} does not exist (give a model folder or its config.json)")
    return None


def model_config(cfg: DictConfig, spec: Any) -> tuple[Any, str]:
    """The transformers config of the model a job trains, and where its numbers came from."""
    from transformers import AutoConfig, LlamaConfig

    local = _local_config(cfg)
    if local is not None:
        return AutoConfig.from_pretrained(str(local.parent) if local.name == "config.json" else str(local)), str(local)
    if hasattr(spec, "load_tokenizer") and hasattr(spec, "intermediate_size"):  # the built-in tiny Llama
        vocab = len(spec.load_tokenizer())  # offline and about a second
        c = LlamaConfig(
            vocab_size=vocab,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            max_position_embeddings=spec.max_position_embeddings,
            tie_word_embeddings=False,
        )
        return c, f"model.spec ({type(spec).__name__})"
    hub_id = getattr(spec, "hub_id", None) or HUB_ID_OF.get(type(spec).__name__)
    if hub_id in ARCH:
        return ARCH[hub_id].hf_config(), f"shipped numbers for {hub_id}"
    if hub_id:
        try:  # a copy in the local Hugging Face cache, never a download
            return AutoConfig.from_pretrained(hub_id, local_files_only=True), f"local Hugging Face cache ({hub_id})"
        except OSError:
            pass
    raise ConfigError(
        f"model.spec: no architecture numbers for {hub_id or type(spec).__name__} (shipped: {sorted(ARCH)}); give a "
        "local copy with plan.config=/path/to/config.json or model.spec.path"
    )


#: specs that are not HubModel but load a known hub model
HUB_ID_OF = {"SmolLM2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def meta_model(config: Any) -> nn.Module:
    """The causal LM with every tensor on the meta device: shapes and names, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
