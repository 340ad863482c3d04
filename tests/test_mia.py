"""Membership-inference attacks on known answers: loss, zlib, Min-K% and Min-K%++ scores on
hand-made token NLLs and logits, each expected value written out from the papers' formulas
(higher score = member), and the AUC direction."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from torch import nn

from unlearn.eval.mia import attack_aucs, attack_scores, loss_score, min_k_pp_score, min_k_score, zlib_score
from unlearn.eval.scoring import Scores, score_rows

NLL = np.array([0.1, 2.0, 0.5, 3.0, 1.0, 0.2, 4.0, 0.3, 0.7, 1.5])  # mean 1.33, sum 13.3


def test_loss_score_is_minus_the_mean_token_nll():
    assert loss_score(NLL) == pytest.approx(-1.33)
    assert loss_score(np.array([0.5, 1.5, 4.0])) == pytest.approx(-2.0)


def test_zlib_score_is_minus_log_perplexity_over_zlib_entropy():
    # Carlini et al. 2021 / Shi et al.'s code: log(ppl) / len(zlib.compress(text)), log(ppl) = mean NLL
    text = "the heron stood on the lock gate, the heron stood on the lock gate"
    entropy = len(zlib.compress(bytes(text, "utf-8")))
    assert zlib_score(NLL, text) == pytest.approx(-1.33 / entropy)
    # a more compressible text with the same NLLs: a smaller entropy, so a more negative score
    assert zlib_score(NLL, "aaaa" * 40) == pytest.approx(-1.33 / len(zlib.compress(b"aaaa" * 40)))
    assert zlib_score(NLL, "aaaa" * 40) < zlib_score(NLL, text) < 0


def test_min_k_is_the_mean_log_prob_of_the_least_likely_tokens_counted_as_the_reference_does():
    # Shi et al.: k_length = int(len(all_prob) * ratio); mean of np.sort(all_prob)[:k_length]
    assert min_k_score(NLL, 0.2) == pytest.approx(-(4.0 + 3.0) / 2)
    assert min_k_score(NLL, 0.25) == pytest.approx(-(4.0 + 3.0) / 2)  # int(2.5) = 2 tokens, not 3
    assert min_k_score(NLL, 0.5) == pytest.approx(-(4.0 + 3.0 + 2.0 + 1.5 + 1.0) / 5)
    assert min_k_score(NLL, 1.0) == pytest.approx(loss_score(NLL))
    assert min_k_score(np.array([0.4, 2.0]), 0.2) == pytest.approx(-2.0)  # at least one token


class _Bigram(nn.Module):
    """Logits of the next token are a fixed row of ``table`` chosen by the current token."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.tensor(table, dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> object:
        return type("Output", (), {"logits": self.table[input_ids]})()


TABLE = np.array([[2.0, 0.0, -1.0, 0.5], [0.0, 3.0, 1.0, -2.0], [1.0, 1.0, 1.0, 0.0], [-1.0, 0.5, 2.5, 0.0]])
ROWS = [[0, 1, 2, 3, 3, 2], [3, 2, 1, 1]]


def _reference_minkpp(table: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Zhang et al. 2024: (log p(x_t) − μ_t) / σ_t, μ_t = E_p[log p], σ_t² = E_p[(log p)²] − μ_t²."""
    nll, z = [], []
    for cur, nxt in zip(ids[:-1], ids[1:], strict=True):
        logp = table[cur] - np.log(np.exp(table[cur]).sum())
        p = np.exp(logp)
        mu = (p * logp).sum()
        sigma = np.sqrt((p * logp**2).sum() - mu**2)
        nll.append(-logp[nxt])
        z.append((logp[nxt] - mu) / sigma)
    return np.array(nll), np.array(z)


def test_token_nll_and_minkpp_token_scores_from_logits():
    encoded = [{"input_ids": ids, "labels": ids} for ids in ROWS]
    s = score_rows(_Bigram(TABLE), encoded, pad_id=0, batch_size=2, minkpp=True)
    for i, ids in enumerate(ROWS):
        nll, z = _reference_minkpp(TABLE, ids)
        np.testing.assert_allclose(s.token_nll[i], nll, rtol=1e-5)
        np.testing.assert_allclose(s.token_zpp[i], z, rtol=1e-5, atol=1e-6)
        assert s.nll_sum[i] == pytest.approx(nll.sum(), rel=1e-5) and s.n_tokens[i] == len(ids) - 1
        # the Min-K%++ score: the mean of the int(k·n) lowest token scores
        assert min_k_pp_score(s.token_zpp[i], 0.4) == pytest.approx(
            np.sort(z)[: max(1, int(0.4 * len(z)))].mean(), rel=1e-5
        )
    # one value written out: row 1's first token, 3 -> 2, is its context's most likely token
    assert s.token_zpp[1][0] == pytest.approx(0.4849, abs=1e-3)


def test_aucs_point_up_for_members_that_score_higher_on_every_attack():
    members = Scores(
        np.zeros(2),
        np.zeros(2),
        [np.array([0.1, 0.2]), np.array([0.2, 0.1, 0.3])],
        [np.array([2.0, 1.0]), np.array([1.5, 1.0, 2.0])],
    )
    nonmembers = Scores(
        np.zeros(2),
        np.zeros(2),
        [np.array([3.0, 2.0]), np.array([2.5, 4.0, 2.0])],
        [np.array([-1.0, 0.0]), np.array([-0.5, -2.0, 0.0])],
    )
    texts = ["a member text", "another member text"]
    m, n = attack_scores(members, texts, 0.5), attack_scores(nonmembers, texts, 0.5)
    assert set(m) == {"loss", "zlib", "min_k", "min_k_pp"}
    assert attack_aucs(m, n) == {"loss": 1.0, "zlib": 1.0, "min_k": 1.0, "min_k_pp": 1.0}
    assert attack_aucs(n, m) == {"loss": 0.0, "zlib": 0.0, "min_k": 0.0, "min_k_pp": 0.0}
