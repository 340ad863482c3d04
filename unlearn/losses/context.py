"""What loss components may use when they set up, before the first training step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from unlearn.data.collate import collate
from unlearn.data.format import PromptFormat
from unlearn.models.reference import Reference, eval_mode, is_peft


@dataclass
class PrepareContext:
    """Handed to ``component.prepare(ctx)`` by the pipeline.

    ``encoded`` holds the tokenised training rows by role (``forget``, ``retain``, ``normal``), so
    a component can precompute per-sample values (NPO's reference log-probabilities) keyed by the
    rows' ``id``; ``rows`` holds the same rows as data (IDK needs the forget questions), encoded
    with ``fmt`` and ``max_length``. ``reference`` is the frozen starting model (see
    :class:`Reference`).
    """

    model: nn.Module
    reference: Reference
    tokenizer: Any
    encoded: dict[str, Sequence[dict[str, Any]]] = field(default_factory=dict)
    batch_size: int = 8
    seed: int = 0
    rows: dict[str, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    fmt: PromptFormat = field(default_factory=PromptFormat)
    max_length: int = 256

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def batches(self, role: str) -> Iterator[dict[str, Any]]:
        """Padded batches of the encoded rows of ``role``, on the model's device."""
        rows = self.encoded.get(role) or []
        pad = self.tokenizer.pad_token_id
        for i in range(0, len(rows), self.batch_size):
            b = collate(rows[i : i + self.batch_size], pad)
            yield {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}

    @torch.no_grad()
    def reference_logits(self, batch: Mapping[str, Any]) -> Tensor:
        """Logits of the starting model, without a snapshot: before training the live model *is*
        the reference, except under LoRA, where the reference is the base with the adapter off."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if is_peft(self.model):
            return self.reference(**inputs).logits
        with eval_mode(self.model):  # no dropout in reference values
            return self.model(**inputs).logits
