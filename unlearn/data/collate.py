"""Padding encoded rows into batches."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def pad(seqs: Sequence[Sequence[int]], value: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``seqs`` as one ``[B, T]`` long tensor, filled with ``value`` on ``side`` up to the longest,
    and its attention mask (1 on the given tokens, 0 on the padding).

    The one padding rule of the package: training batches and scored contexts are right-padded,
    generation prompts left-padded (so that every prompt ends where generation starts).
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        out[i, cols] = torch.as_tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return out, mask


def collate(encoded: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-pad ``input_ids``/``labels`` into ``[B, T]`` tensors with an attention mask."""
    if not encoded:
        raise ValueError("cannot collate an empty batch")
    ids, mask = pad([e["input_ids"] for e in encoded], pad_id)
    labels, _ = pad([e["labels"] for e in encoded], -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "ids": [e["id"] for e in encoded]}
