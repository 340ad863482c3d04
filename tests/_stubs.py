"""Test doubles with known behaviour, for known-answer checks of the evaluators.

``MemorizerLM`` is a causal LM that has memorised some texts perfectly: ``generate`` continues a
known prompt with its known continuation (or repeats a fixed word), and ``forward`` puts all the
probability on the next token of a memorised sequence (uniform logits elsewhere).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn


class MemorizerLM(nn.Module):
    def __init__(
        self,
        tokenizer: Any,
        continuations: Mapping[str, str] = {},
        memorised: Sequence[str] = (),
        repeat: str | None = None,
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # evaluators read the device from the parameters
        self.tok, self.vocab = tokenizer, len(tokenizer)
        self.continuations = [
            (self._body(tokenizer(p)["input_ids"]), tokenizer(c, add_special_tokens=False)["input_ids"])
            for p, c in continuations.items()
        ]
        self.memorised = {tuple(tokenizer(t)["input_ids"]) for t in memorised}
        self.repeat = tokenizer(f" {repeat}", add_special_tokens=False)["input_ids"] if repeat else None
        self.prompts_seen: list[list[int]] = []

    def _body(self, ids: Sequence[int]) -> list[int]:
        return [i for i in ids if i != self.tok.bos_token_id]

    def _continue(self, prompt: list[int], n: int) -> list[int]:
        if self.repeat is not None:
            return (self.repeat * n)[:n]
        body = self._body(prompt)
        for known, cont in self.continuations:
            if body and known[-len(body) :] == body:  # a left-truncated prompt still matches
                return cont[:n]
        return []

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, pad_token_id: int, **_: Any
    ) -> torch.Tensor:
        rows = []
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            self.prompts_seen.append(ids[mask.bool()].tolist())
            cont = self._continue(self.prompts_seen[-1], max_new_tokens)
            rows.append(ids.tolist() + cont + [pad_token_id] * (max_new_tokens - len(cont)))
        return torch.tensor(rows)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any) -> Any:
        logits = torch.zeros(*input_ids.shape, self.vocab)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        for b, (ids, m) in enumerate(zip(input_ids, mask, strict=True)):
            seq = ids[m.bool()].tolist()
            if any(known[: len(seq)] == tuple(seq) for known in self.memorised):
                for t in range(len(seq) - 1):
                    logits[b, t, seq[t + 1]] = 30.0
        return type("Output", (), {"logits": logits})()


class PositionalEvaluator:
    """An evaluator of the retired form ``evaluate(model, tokenizer, fmt, splits, oracle=None)``
    with no ``reports_diverged``: not an :class:`unlearn.evaluator.Evaluator`."""

    def evaluate(self, model: Any, tokenizer: Any, fmt: Any, splits: Any, oracle: Any = None) -> dict[str, Any]:
        return {"metrics": {}, "arrays": {}}


def fake_model_folder(path: Any) -> Any:
    """A folder shaped like a Hugging Face checkpoint (config, one safetensors file, tokenizer
    files) that passes the validation pass's form checks; nothing here can be loaded as a model."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"w": torch.zeros(2)}, str(path / "model.safetensors"))
    (path / "tokenizer_config.json").write_text("{}")
    return path
