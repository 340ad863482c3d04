"""Metric functions on plain arrays, built on well-kept libraries (rouge-score, scipy, sklearn)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


@lru_cache(maxsize=2)
def _rouge(use_stemmer: bool = True) -> Any:
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L recall of each prediction against its reference (TOFU's answer metric)."""
    return rouge_l(predictions, references, "recall", use_stemmer=True)


def rouge_l(
    predictions: Sequence[str], references: Sequence[str], measure: str = "fmeasure", use_stemmer: bool = False
) -> np.ndarray:
    """ROUGE-L ``measure`` (``recall``, ``precision`` or ``fmeasure``) of each prediction against its
    reference. The defaults are MUSE's (F-measure, no stemmer: its ``mean_rougeL``)."""
    if measure not in ("recall", "precision", "fmeasure"):
        raise ValueError(f"ROUGE-L measure must be recall, precision or fmeasure, got {measure!r}")
    scorer = _rouge(use_stemmer)
    return np.array(
        [getattr(scorer.score(ref, pred)["rougeL"], measure) for pred, ref in zip(predictions, references, strict=True)]
    )


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu, 0–100) of the predictions against one reference each."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


def mean_example_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean over examples of sacrebleu's ``corpus_bleu([p], [[r]])`` (0–100): the copyright
    protocol of SOUL/FLAT/SGA's ``eval_leakage_rate`` (one BLEU per prompt, then averaged; not a
    corpus BLEU over all prompts, and not ``sentence_bleu``, whose effective order differs)."""
    import sacrebleu

    return float(
        np.mean([sacrebleu.corpus_bleu([p], [[r]]).score for p, r in zip(predictions, references, strict=True)])
    )


def sentence_bleu(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Smoothed sentence BLEU (sacrebleu, 0–100) of each prediction against its reference."""
    import sacrebleu

    return np.array([sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(predictions, references, strict=True)])


def perplexity(nll_sum: np.ndarray, n_tokens: np.ndarray) -> float:
    """Token-weighted perplexity ``exp(Σ NLL / Σ tokens)`` over all rows; ``inf`` when it overflows
    or any NLL is non-finite (a collapsed model), never an exception."""
    total, count = float(np.sum(nll_sum)), int(np.sum(n_tokens))
    if count == 0:
        raise ValueError("perplexity of zero tokens")
    mean = total / count
    return math.exp(mean) if math.isfinite(mean) and mean < 700 else float("inf")


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Fraction of the word ``n``-grams of ``text`` that repeat an earlier one (0 = no repetition,
    → 1 for a loop such as "the the the ..."); 0 for texts shorter than ``n`` words."""
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def collapse_reasons(
    values: dict[str, float], ppl: float, max_ppl: float, repetition: float, max_repetition: float
) -> dict[str, str]:
    """Why a model counts as collapsed (empty: it does not). Three signs, each reported by name:
    ``nonfinite`` (a metric in ``values`` is NaN/inf), ``ppl`` (perplexity above ``max_ppl``),
    ``repetition`` (mean repeated n-gram fraction of its generations above ``max_repetition``)."""
    out: dict[str, str] = {}
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        out["nonfinite"] = f"non-finite {', '.join(bad)}"
    if not math.isfinite(ppl) or ppl > max_ppl:
        out["ppl"] = f"perplexity {ppl:.4g} > {max_ppl:.4g}"
    if repetition > max_repetition:
        out["repetition"] = f"degenerate repetition: {repetition:.2f} of generated n-grams repeat (> {max_repetition})"
    return out


TRUTH_RATIO_MEANS = ("geometric", "arithmetic")


def truth_ratio(p_paraphrased: np.ndarray, p_perturbed: np.ndarray, mean: str = "geometric") -> np.ndarray:
    """``R = mean_â P(â|q)^(1/|â|) / P(ã|q)^(1/|ã|)`` per question, the mean over the perturbed
    answers â being ``geometric`` (default) or ``arithmetic``.

    ``p_paraphrased [N]`` and ``p_perturbed [N, M]`` are length-normalised probabilities. Small R:
    the model prefers the true (paraphrased) answer to the perturbed ones. ``geometric``,
    ``exp(mean_j log p_j) / p_para``, is what TOFU's released code (``aggregate_eval_stat.py``:
    ``exp(mean perturbed loss − paraphrased loss)``) and open-unlearning's ``truth_ratio`` compute,
    and so what TOFU's published tables are; ``arithmetic`` is the formula as printed in the TOFU
    paper (Maini et al., 2024, §2.2.1), always ≥ the geometric one (AM–GM).
    """
    if mean not in TRUTH_RATIO_MEANS:
        raise ValueError(f"truth-ratio mean must be one of {TRUTH_RATIO_MEANS}, got {mean!r}")
    p_perturbed = np.asarray(p_perturbed, dtype=float)
    if mean == "geometric":
        num = np.exp(np.log(np.maximum(p_perturbed, 1e-300)).mean(-1))
    else:
        num = p_perturbed.mean(-1)
    return num / np.maximum(p_paraphrased, 1e-300)


def truth_ratio_score(r: np.ndarray) -> float:
    """``mean(max(0, 1 − R))``: TOFU's truth-ratio score on retain-type sets (higher is better)."""
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def truth_ratio_forget(r: np.ndarray) -> float:
    """``mean(min(R, 1/R))``: TOFU's forget truth ratio, 1 = no preference for the truth."""
    r = np.maximum(r, 1e-300)
    return float(np.mean(np.minimum(r, 1.0 / r)))


def forget_quality(r_unlearned: np.ndarray, r_oracle: np.ndarray) -> float:
    """p-value of the two-sample Kolmogorov–Smirnov test between the two truth-ratio samples."""
    return float(stats.ks_2samp(r_unlearned, r_oracle).pvalue)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean, 0 when any value is 0 (as TOFU's model utility)."""
    v = np.asarray(values, dtype=float)
    if np.any(v <= 0):
        return 0.0
    return float(stats.hmean(v))


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC of separating members (label 1) from non-members by a score (higher = member)."""
    y = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return float(roc_auc_score(y, np.r_[member_scores, nonmember_scores]))


def privleak(auc: float, reference_auc: float) -> float:
    """``(AUC − AUC_ref) / AUC_ref × 100`` (MUSE's PrivLeak) on AUCs with the *holdout* (non-member)
    texts as the positive class: a model that still knows the forget set has AUC ≈ 0 and PrivLeak
    ≈ −100 (under-unlearned), 0 is the oracle's, positive is over-unlearning. Every benchmark here
    reports PrivLeak this way (open-unlearning's ``privleak``: its ``1 − AUC`` on forget-positive AUCs)."""
    return (auc - reference_auc) / reference_auc * 100.0


def log10_safe(x: float) -> float:
    return math.log10(x) if x > 0 else float("-inf")
