"""IDK: teach "I don't know" on the forget questions (the TOFU paper's IDK baseline, Maini et al. 2024)."""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from unlearn.config import ConfigError
from unlearn.data.collate import collate
from unlearn.data.format import encode_qa
from unlearn.hooks import Component
from unlearn.losses.common import Batch, ids_of, mean_nll

ANSWERS = (
    "I don't know.",
    "I'm not sure about that.",
    "I have no information about that.",
    "I can't answer that.",
    "That is not something I know.",
    "I have no idea.",
)

#: the roles whose questions get an IDK target (normal rows too, when SGA smoothing is on)
ROLES = ("forget", "normal")


class IDK(Component):
    """Forget loss ``ℓ(x_f → idk)`` per sample: the NLL of a refusal-style answer to each forget
    question. The answer is one of ``answers``, fixed per row id (a hash, so runs are
    reproducible). :meth:`prepare` tokenises the targets once, keyed by row id; it needs QA rows
    (a ``question``) and refuses text rows with the row id in the message.
    """

    def __init__(self, answers: Sequence[str] = ANSWERS) -> None:
        if isinstance(answers, str) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(f"forget.answers must be a non-empty list of non-empty strings, got {answers!r}")
        self.answers = [str(a) for a in answers]
        self._targets: dict[str, dict[str, Any]] = {}
        self._pad = 0

    def __repr__(self) -> str:
        return f"IDK(answers={len(self.answers)} strings)"

    def answer_for(self, row_id: str) -> str:
        h = int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16)
        return self.answers[h % len(self.answers)]

    def prepare(self, ctx: Any) -> None:
        self._pad = int(ctx.tokenizer.pad_token_id)
        self._targets = {}
        for role in ROLES:
            for row in ctx.rows.get(role) or []:
                rid = str(row.get("id", ""))
                if "question" not in row:
                    raise ConfigError(
                        f"forget=idk needs question/answer rows, but {role} row {rid!r} has no question (keys: "
                        f"{sorted(row)})"
                    )
                enc = encode_qa(ctx.tokenizer, ctx.fmt, row["question"], self.answer_for(rid), ctx.max_length)
                self._targets[rid] = {**enc, "id": rid}

    def targets(self, batch: Batch) -> dict[str, Any]:
        """The batch's rows re-targeted to their IDK answers, padded like the batch."""
        rows = []
        for rid in ids_of(batch):
            if rid not in self._targets:
                raise KeyError(f"IDK has no target for row {rid!r}: prepare() encodes the forget and normal rows only")
            rows.append(self._targets[rid])
        out = collate(rows, self._pad)
        device = batch["input_ids"].device
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in out.items()}

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        return mean_nll(model, self.targets(batch))
