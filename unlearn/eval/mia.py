"""Membership-inference attacks on per-token statistics (MUSE PrivLeak, RWKU MIA, toy MIA).

Every attack maps a row's token statistics to a score where *higher means more likely a member*
(seen in training); :func:`attack_aucs` turns member/non-member scores into ROC AUCs.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from unlearn.eval.metrics import auc
from unlearn.eval.scoring import Scores


def loss_score(token_nll: np.ndarray) -> float:
    """−mean NLL (Yeom et al., 2018)."""
    return -float(token_nll.mean()) if token_nll.size else 0.0


def zlib_score(token_nll: np.ndarray, text: str) -> float:
    """−(mean token NLL) / zlib entropy of the text, the entropy being ``len(zlib.compress(text))``
    in bytes (Carlini et al., 2021; as in Shi et al.'s Min-K% Prob code,
    ``np.log(ppl) / zlib_entropy``, negated here so that higher means member)."""
    if token_nll.size == 0:
        return 0.0
    return -float(token_nll.mean()) / max(1, len(zlib.compress(text.encode("utf-8"))))


def lowest_k_mean(values: np.ndarray, k: float) -> float:
    """Mean of the lowest ``int(k * len(values))`` values, as the Min-K% Prob and Min-K%++
    reference code count them (floor), but at least one so a short text still has a score."""
    if values.size == 0:
        return 0.0
    n = max(1, int(k * values.size))
    return float(np.sort(values)[:n].mean())


def min_k_score(token_nll: np.ndarray, k: float = 0.2) -> float:
    """Min-K% Prob (Shi et al., 2024): mean log-prob of the k% least likely tokens."""
    return lowest_k_mean(-token_nll, k)


def min_k_pp_score(token_zpp: np.ndarray, k: float = 0.2) -> float:
    """Min-K%++ (Zhang et al., 2024): mean of the k% lowest calibrated token scores."""
    return lowest_k_mean(token_zpp, k)


def attack_scores(scores: Scores, texts: Sequence[str], k: float = 0.2) -> dict[str, np.ndarray]:
    """All attacks' scores for the rows of ``scores`` (``texts`` are the rows' scored texts)."""
    out = {
        "loss": np.array([loss_score(t) for t in scores.token_nll]),
        "zlib": np.array([zlib_score(t, s) for t, s in zip(scores.token_nll, texts, strict=True)]),
        "min_k": np.array([min_k_score(t, k) for t in scores.token_nll]),
    }
    if scores.token_zpp is not None:
        out["min_k_pp"] = np.array([min_k_pp_score(z, k) for z in scores.token_zpp])
    return out


def attack_aucs(members: dict[str, np.ndarray], nonmembers: dict[str, np.ndarray]) -> dict[str, float]:
    """ROC AUC of each attack separating members from non-members (0.5 = no leak)."""
    return {name: auc(members[name], nonmembers[name]) for name in members if name in nonmembers}
