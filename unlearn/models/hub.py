"""Pretrained causal LMs from the Hugging Face hub or a local folder (the papers' models).

``HubModel`` is a model spec like :class:`~unlearn.models.tiny.TinyLlama`: ``.load(dtype)`` returns
``(model, tokenizer)`` with a pad token, ``.cache_key()`` identifies the starting weights. The
dtype comes from the pipeline (``model.dtype=auto``: bf16 on GPU, fp32 on CPU). Remote code is never
executed: every model configured here has a native transformers implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearn.benchmarks.hub import hub_reachable, offline_mode
from unlearn.config import ConfigError
from unlearn.models.load import causal_lm, checkpoint_fingerprint, ensure_pad, quiet_transformers

ATTENTION = (None, "eager", "sdpa", "flash_attention_2", "flex_attention")


class ModelUnavailable(ConfigError):
    """The weights cannot be read (offline hub, missing folder, gated model, missing package)."""

    kind = "model unavailable"


@dataclass(frozen=True)
class HubModel:
    """A causal LM by hub id (``hub_id`` at ``revision``) or from a local folder (``path``).

    ``attn_implementation``: null lets transformers choose (sdpa where available); set
    ``flash_attention_2`` on GPUs that have it. ``trust_remote_code`` must stay false.
    """

    hub_id: str | None = None
    path: str | None = None
    revision: str | None = None
    attn_implementation: str | None = None
    trust_remote_code: bool = False
    name: str = "hub"

    def __post_init__(self) -> None:
        if not (self.hub_id or self.path):
            raise ValueError("model.spec needs hub_id (a Hugging Face model id) or path (a local checkpoint folder)")
        if self.attn_implementation not in ATTENTION:
            raise ValueError(
                f"model.spec.attn_implementation must be one of {list(ATTENTION)}, got {self.attn_implementation!r}"
            )
        if self.trust_remote_code is not False:
            raise ValueError(
                "model.spec.trust_remote_code must be false (unlearn never runs a model repository's code), got "
                f"{self.trust_remote_code!r}"
            )

    @property
    def where(self) -> str:
        return str(Path(self.path).expanduser()) if self.path else str(self.hub_id)

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"trust_remote_code": False}
        if self.revision and not self.path:
            kw["revision"] = self.revision
        return kw

    def _from_pretrained(self, dtype: torch.dtype) -> tuple[Any, Any]:
        from transformers import AutoTokenizer

        kw = self._kwargs()
        model_kw = {
            **kw,
            "dtype": dtype,
            **({"attn_implementation": self.attn_implementation} if self.attn_implementation else {}),
        }
        tokenizer = AutoTokenizer.from_pretrained(self.where, **kw)
        model = causal_lm(self.where, **model_kw)
        return model, ensure_pad(tokenizer)

    def load(self, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
        """``(model, tokenizer)``; a :class:`ModelUnavailable` within seconds when offline and not cached."""
        quiet_transformers()
        if self.path:
            if not (Path(self.where) / "config.json").exists():
                raise ModelUnavailable(
                    f"model.spec.path={self.path} is not a Hugging Face model folder (no config.json)"
                )
            return self._from_pretrained(dtype)
        online = hub_reachable()
        try:
            with offline_mode(not online):  # offline, a copy in the local HF cache still loads
                return self._from_pretrained(dtype)
        except ConfigError:
            raise  # the weights were found and do not fit their config: not an unavailable model
        except (OSError, ValueError) as e:
            why = (
                "the Hugging Face hub is not reachable and the model is not in the local cache"
                if not online
                else f"{type(e).__name__}: {e}"
            )
            hint = (
                "download it once (huggingface-cli download, with access granted for gated models) or give a local "
                "folder with model.spec.path=/path/to/checkpoint"
            )
            raise ModelUnavailable(f"model {self.hub_id}: cannot load it: {why}; {hint}") from None

    def cache_key(self) -> dict[str, Any]:
        """The starting weights: a local folder's file fingerprint, or hub id and revision."""
        if self.path:
            return {"kind": "hub_model", "checkpoint": checkpoint_fingerprint(self.where)}
        return {"kind": "hub_model", "hub_id": self.hub_id, "revision": self.revision or "main"}
