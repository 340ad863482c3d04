"""Batched log-likelihood scoring: the shared engine of probability, truth-ratio, multiple-choice
and membership-inference metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.config import ConfigError
from unlearn.data.collate import collate
from unlearn.data.format import PromptFormat, encode_qa, encode_text


@dataclass
class Scores:
    """Per-row log-likelihood statistics of the labelled tokens.

    ``token_nll[i]`` are the per-token NLLs of row ``i``; ``token_zpp[i]`` (when asked for) are the
    Min-K%++ token scores ``(log p(x_t) − μ_t) / σ_t`` with ``μ_t, σ_t`` the mean and standard
    deviation of ``log p(·)`` under the model's own next-token distribution.
    """

    nll_sum: np.ndarray
    n_tokens: np.ndarray
    token_nll: list[np.ndarray]
    token_zpp: list[np.ndarray] | None = None


@torch.no_grad()
def score_rows(
    model: nn.Module, encoded: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 32, minkpp: bool = False
) -> Scores:
    """Score encoded rows (``input_ids``/``labels``), batched longest-first, in eval mode."""
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]["input_ids"]))
    total = np.zeros(len(encoded))
    count = np.zeros(len(encoded), dtype=np.int64)
    per_token: list[np.ndarray] = [np.zeros(0)] * len(encoded)
    per_zpp: list[np.ndarray] = [np.zeros(0)] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate([{**encoded[i], "id": ""} for i in idx], pad_id)
            ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            tgt = labels[:, 1:]
            valid = tgt != -100
            tok_nll = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), ignore_index=-100, reduction="none"
            ).view(tgt.shape)
            zpp = _minkpp_tokens(logits, tgt, tok_nll) if minkpp else None
            sums, counts = (tok_nll * valid).sum(-1), valid.sum(-1)
            for j, i in enumerate(idx):
                total[i], count[i] = float(sums[j]), int(counts[j])
                per_token[i] = tok_nll[j][valid[j]].cpu().numpy()
                if zpp is not None:
                    per_zpp[i] = zpp[j][valid[j]].cpu().numpy()
    finally:
        model.train(was_training)
    return Scores(total, count, per_token, per_zpp if minkpp else None)


#: floor of the Min-K%++ variance σ², open-unlearning's (``torch.clamp(sigma, min=1e-6)``). On a
#: peaked step (σ² → 0) a floor of 1e-12 turns a log-prob gap of 40 into a z-score of 4e7; with
#: 1e-6, |z| ≤ 1000·|log p − μ|, and it agrees with open-unlearning's values everywhere.
MINKPP_VAR_FLOOR = 1e-6


def _minkpp_tokens(logits: torch.Tensor, tgt: torch.Tensor, tok_nll: torch.Tensor) -> torch.Tensor:
    """Min-K%++ token scores (Zhang et al., 2024; their code's ``(log p − μ) / sqrt(σ²)``, σ²
    floored at :data:`MINKPP_VAR_FLOOR`)."""
    logp = logits.log_softmax(-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(MINKPP_VAR_FLOOR).sqrt()
    return (-tok_nll - mu) / sigma


def score_encoded(
    model: nn.Module, encoded: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """``(nll_sum, n_tokens, per_token_nll)`` per encoded row (see :func:`score_rows`)."""
    s = score_rows(model, encoded, pad_id, batch_size)
    return s.nll_sum, s.n_tokens, s.token_nll


def encode_answers(
    tokenizer: Any, fmt: PromptFormat, pairs: Sequence[tuple[str, str]], max_length: int
) -> list[dict[str, list[int]]]:
    """Each ``(question, answer)`` encoded for scoring, cut to ``max_length`` tokens; a row whose
    prompt leaves no answer token is an error (``benchmark.eval.max_length``), not a probability
    of ``exp(-0/1) = 1``: a long chat template or system prompt can fill the whole window. The
    target model is scored first, so this stops a run before its unlearning."""
    encoded = [encode_qa(tokenizer, fmt, q, a, max_length) for q, a in pairs]
    empty = [i for i, e in enumerate(encoded) if all(label == -100 for label in e["labels"])]
    if empty:
        q = pairs[empty[0]][0]
        raise ConfigError(
            f"benchmark.eval.max_length={max_length} leaves no answer token in {len(empty)} of {len(pairs)} rows "
            f"(the first: question {q[:80]!r}, whose prompt fills all {len(encoded[empty[0]]['input_ids'])} tokens): "
            "raise benchmark.eval.max_length or shorten the prompt (model.prompt)"
        )
    return encoded


def score_answers(
    model: nn.Module,
    tokenizer: Any,
    fmt: PromptFormat,
    pairs: Sequence[tuple[str, str]],
    max_length: int = 512,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """``(nll_sum, n_tokens)`` of each answer given its question."""
    encoded = encode_answers(tokenizer, fmt, pairs, max_length)
    total, count, _ = score_encoded(model, encoded, tokenizer.pad_token_id, batch_size)
    return total, count


def score_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int = 512,
    batch_size: int = 32,
    minkpp: bool = False,
) -> Scores:
    """Token statistics of plain texts (every token scored; for perplexity and membership attacks)."""
    encoded = [encode_text(tokenizer, t, max_length) for t in texts]
    return score_rows(model, encoded, tokenizer.pad_token_id, batch_size, minkpp=minkpp)


def text_perplexity(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], max_length: int = 512, batch_size: int = 32
) -> float:
    """Token-weighted perplexity of the model on plain texts (WikiText-style utility); ``inf``
    rather than an error for a collapsed model."""
    from unlearn.eval.metrics import perplexity

    s = score_texts(model, tokenizer, texts, max_length, batch_size)
    return perplexity(s.nll_sum, s.n_tokens)


def context_length(model: nn.Module) -> int | None:
    """The model's context window in tokens (``max_position_embeddings``), if it declares one."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return n if isinstance(n, int) and n > 0 else None


def normalized_prob(nll_sum: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """``P(a|q)^(1/|a|)`` = exp(−mean token NLL)."""
    return np.exp(-nll_sum / np.maximum(n_tokens, 1))


def multiple_choice(
    model: nn.Module,
    tokenizer: Any,
    fmt: PromptFormat,
    rows: Sequence[Mapping[str, Any]],
    max_length: int = 512,
    batch_size: int = 32,
    length_normalize: bool = True,
) -> np.ndarray:
    """Index of the most likely choice per row, scoring each choice as the answer text (cloze).

    ``rows`` have ``question`` and ``choices``; with ``length_normalize`` choices are compared by
    mean token log-likelihood, otherwise by the sum.
    """
    pairs = [(r["question"], c) for r in rows for c in r["choices"]]
    total, count = score_answers(model, tokenizer, fmt, pairs, max_length, batch_size)
    score = -(total / np.maximum(count, 1) if length_normalize else total)
    out, k = [], 0
    for r in rows:
        n = len(r["choices"])
        out.append(int(np.argmax(score[k : k + n])))
        k += n
    return np.array(out, dtype=np.int64)
