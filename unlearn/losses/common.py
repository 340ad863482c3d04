"""Forward helpers shared by the loss components.

A batch is a dict with ``input_ids``, ``attention_mask`` and ``labels`` (prompt and padding tokens
set to -100) and ``ids`` (one string per sample). Every loss component returns a per-sample tensor
``[B]`` of the quantity it *minimises*; the task reduces it.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from unlearn.rules import is_number

Batch = Mapping[str, Any]


def logits_of(model: nn.Module, batch: Batch) -> Tensor:
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def token_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Summed next-token NLL over the labelled tokens of each sample, and their count.

    ``logits [B, T, V]``, ``labels [B, T]`` (-100 = ignored) → ``(nll_sum [B], n_tokens [B])``.
    Computed in fp32 whatever the model's dtype, since bf16 log-softmax loses the small
    probabilities that unlearning metrics care about.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=-100,
        reduction="none",
    ).view(shift_labels.shape)
    mask = shift_labels != -100
    return (nll * mask).sum(-1), mask.sum(-1)


def sequence_nll(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """``(ℓ_sum(x) [B], |y| [B])`` for the labelled (answer) tokens of each sample."""
    return token_nll(logits_of(model, batch), batch["labels"])


def mean_nll(model: nn.Module, batch: Batch) -> Tensor:
    """``ℓ(x)``: mean token NLL of each sample's labelled tokens, ``[B]``."""
    total, count = sequence_nll(model, batch)
    return total / count.clamp_min(1)


def answer_mask(labels: Tensor) -> Tensor:
    """``[B, T]`` bool: the positions whose token is a label (answer tokens; all tokens of a text row)."""
    return labels != -100


def require_number(value: Any, key: str, low: float | None = None, low_open: bool = True) -> float:
    """``value`` as a float, or a ValueError naming ``key`` (``> low`` or ``>= low`` when given)."""
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if not ok:
        bound = "" if low is None else f" {'>' if low_open else '>='} {low:g}"
        raise ValueError(f"{key} must be a number{bound}, got {value!r}")
    return float(value)


def ids_of(batch: Batch) -> list[str]:
    ids = batch.get("ids")
    if ids is None:
        raise ValueError("this loss needs row ids in the batch (the 'ids' key the collate function adds)")
    return [str(i) for i in ids]
