"""TOFU-style evaluation of question answering (used by ``toy`` and ``tofu``).

Per QA set: answer probability, ROUGE-L recall of the greedy answer, truth ratio, and 4-choice
accuracy where rows carry ``choices``. Across sets: forget quality (KS test of forget truth ratios
against the oracle's), model utility (harmonic mean over the retain and utility sets), and a
membership-inference AUC of forget against holdout rows with PrivLeak against the oracle's.

Whose definitions: the truth ratio is TOFU's released code's (geometric mean over the perturbed
answers; ``truth_ratio_mean=arithmetic`` gives the TOFU paper's printed formula). ``mia_auc`` is
open-unlearning's (forget rows the positive class, so ≈1 for a model that still knows them, 0.5 for
one that never saw them), with the attack ``mia_attack`` (``loss``, or ``min_k`` over the answer
tokens without the last one, as open-unlearning's ``tokenwise_logprobs``). ``privleak`` is MUSE's
convention on every benchmark: ``(AUC' − AUC'_oracle) / AUC'_oracle × 100`` with ``AUC' = 1 −
mia_auc`` (holdout positive), i.e. open-unlearning's ``privleak``; negative means under-unlearned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
from torch import nn

from unlearn.data.format import PromptFormat
from unlearn.eval import metrics as M
from unlearn.eval.generate import greedy
from unlearn.eval.mia import loss_score, min_k_score
from unlearn.eval.scoring import encode_answers, multiple_choice, normalized_prob, score_answers, score_encoded
from unlearn.evaluator import EvalContext
from unlearn.utils.progress import Steps

Row = Mapping[str, Any]
MIA_ATTACKS = ("loss", "min_k")

#: direction of every metric this evaluator reports: +1 higher is better, -1 lower is better, 0 neither.
DIRECTIONS = {
    "forget_prob": -1,
    "forget_rouge": -1,
    "forget_truth_ratio": +1,
    "forget_mc_acc": -1,
    "forget_quality": +1,
    "forget_quality_log10": +1,
    "model_utility": +1,
    "mia_auc": 0,
    "privleak": 0,
    # what model utility is made of: higher is better on the sets that must be kept
    **{f"{s}_{m}": +1 for s in ("retain", "real_authors", "world_facts") for m in ("prob", "rouge", "truth_ratio")},
    "retain_mc_acc": +1,
}


def _require(rows: Sequence[Row], keys: Sequence[str], split: str) -> None:
    for k in keys:
        missing = [r.get("id", i) for i, r in enumerate(rows) if k not in r]
        if missing:
            raise ValueError(
                f"evaluation split {split!r}: {len(missing)} rows lack the field {k!r} (first: {missing[0]!r})"
            )


@dataclass
class QAEvaluator:
    """Evaluates one model on the named splits of a benchmark (see module docstring).

    ``utility`` names extra sets that enter model utility (TOFU: real authors, world facts); on them
    the probability is normalised over the answer options, as TOFU does. ``base_answer`` names, per
    set, the field the perturbed answers are compared with in the truth ratio (default
    ``paraphrased_answer``; TOFU uses ``answer`` on real authors and world facts).
    """

    reports_diverged: ClassVar[bool] = False  # a diverged run is not evaluated
    name: str = "toy"
    forget: str = "forget"
    retain: str = "retain"
    utility: Sequence[str] = ("general",)
    holdout: str | None = "holdout"
    max_rows: int | None = None
    batch_size: int = 64
    max_new_tokens: int = 32
    max_length: int = 256
    stop: Sequence[str] = ("\n",)
    seed: int = 0
    base_answer: Mapping[str, str] = field(default_factory=dict)
    truth_ratio_mean: str = "geometric"
    mia_attack: str = "loss"
    min_k: float = 0.4
    mia_drop_last_token: bool = False
    directions: dict[str, int] = field(default_factory=lambda: dict(DIRECTIONS))

    def __post_init__(self) -> None:
        if self.truth_ratio_mean not in M.TRUTH_RATIO_MEANS:
            raise ValueError(
                f"benchmark.eval.truth_ratio_mean must be one of {list(M.TRUTH_RATIO_MEANS)}, "
                f"got {self.truth_ratio_mean!r}"
            )
        if self.mia_attack not in MIA_ATTACKS:
            raise ValueError(f"benchmark.eval.mia_attack must be one of {list(MIA_ATTACKS)}, got {self.mia_attack!r}")
        if not 0 < self.min_k <= 1:
            raise ValueError(f"benchmark.eval.min_k must be in (0, 1], got {self.min_k!r}")

    def mia_score(self, token_nll: np.ndarray) -> float:
        """Membership score of one answer's token NLLs (higher = more likely a member)."""
        if self.mia_drop_last_token:
            token_nll = token_nll[:-1]
        return min_k_score(token_nll, self.min_k) if self.mia_attack == "min_k" else loss_score(token_nll)

    def _true_answers(
        self, model: nn.Module, tok: Any, fmt: PromptFormat, rows: Sequence[Row]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``P(a|q)^(1/|a|)`` and the membership score of each row's answer."""
        encoded = encode_answers(tok, fmt, [(r["question"], r["answer"]) for r in rows], self.max_length)
        s, n, per_token = score_encoded(model, encoded, tok.pad_token_id, self.batch_size)
        return normalized_prob(s, n), np.array([self.mia_score(t) for t in per_token])

    def _subset(self, rows: Sequence[Row]) -> list[Row]:
        if self.max_rows is None or len(rows) <= self.max_rows:
            return list(rows)
        idx = np.random.default_rng(self.seed).choice(len(rows), self.max_rows, replace=False)
        return [rows[i] for i in sorted(idx)]

    def _qa_set(
        self, model: nn.Module, tok: Any, fmt: PromptFormat, rows: Sequence[Row], split: str, normalize_prob: bool
    ) -> dict[str, Any]:
        base = self.base_answer.get(split, "paraphrased_answer")
        _require(rows, ("question", "answer", base, "perturbed_answer"), split)
        p_true, mia = self._true_answers(model, tok, fmt, rows)
        if base == "answer":
            p_para = p_true
        else:
            s, n = score_answers(
                model,
                tok,
                fmt,
                [(r["question"], r[base]) for r in rows],
                max_length=self.max_length,
                batch_size=self.batch_size,
            )
            p_para = normalized_prob(s, n)
        m = min(len(r["perturbed_answer"]) for r in rows)
        pert = [(r["question"], a) for r in rows for a in r["perturbed_answer"][:m]]
        s, n = score_answers(model, tok, fmt, pert, max_length=self.max_length, batch_size=self.batch_size)
        p_pert = normalized_prob(s, n).reshape(len(rows), m)
        tr = M.truth_ratio(p_para, p_pert, self.truth_ratio_mean)
        prompts = [fmt.prompt(r["question"], tok) for r in rows]
        answers = greedy(
            model, tok, prompts, self.max_new_tokens, self.batch_size, self.stop, add_special_tokens=not fmt.chat
        )
        rouge = M.rouge_l_recall(answers, [r["answer"] for r in rows])
        prob = p_true / (p_true + p_pert.sum(-1)) if normalize_prob else p_true
        out: dict[str, Any] = {"prob": prob, "rouge": rouge, "tr": tr, "generated": answers, "mia": mia}
        if all("choices" in r and "answer_index" in r for r in rows):
            pred = multiple_choice(model, tok, fmt, rows, max_length=self.max_length, batch_size=self.batch_size)
            out["mc"] = (pred == np.array([r["answer_index"] for r in rows])).astype(float)
        return out

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        """Returns ``{"metrics": {name: float}, "arrays": {name: list}}``; the oracle's record as
        ``ctx.oracle`` gives forget quality and PrivLeak."""
        model, tokenizer, fmt, splits = ctx.model, ctx.tokenizer, ctx.fmt, ctx.splits
        names = [self.forget, self.retain, *self.utility] + ([self.holdout] if self.holdout else [])
        for s in names:
            if s not in splits:
                raise ValueError(f"benchmark {self.name!r} has no split {s!r} to evaluate (splits: {sorted(splits)})")
        res: dict[str, dict[str, Any]] = {}
        with Steps(f"eval {self.name}", total=len(names)) as steps:
            for s in names:
                rows = self._subset(splits[s])
                if s == self.holdout:  # only the attack's scores: TOFU's holdout sets have no perturbed answers
                    _require(rows, ("question", "answer"), s)
                    res[s] = {"mia": self._true_answers(model, tokenizer, fmt, rows)[1]}
                else:
                    res[s] = self._qa_set(model, tokenizer, fmt, rows, s, normalize_prob=s in self.utility)
                steps.advance(s)
        return self._summarize(res, ctx.oracle)

    def _summarize(self, res: Mapping[str, Mapping[str, Any]], oracle: Mapping[str, Any] | None) -> dict[str, Any]:
        f, r = res[self.forget], res[self.retain]
        metrics: dict[str, float] = {
            "forget_prob": float(np.mean(f["prob"])),
            "forget_rouge": float(np.mean(f["rouge"])),
            "forget_truth_ratio": M.truth_ratio_forget(f["tr"]),
            "retain_prob": float(np.mean(r["prob"])),
            "retain_rouge": float(np.mean(r["rouge"])),
            "retain_truth_ratio": M.truth_ratio_score(r["tr"]),
        }
        utility = [metrics["retain_prob"], metrics["retain_rouge"], metrics["retain_truth_ratio"]]
        for u in self.utility:
            metrics[f"{u}_prob"] = float(np.mean(res[u]["prob"]))
            metrics[f"{u}_rouge"] = float(np.mean(res[u]["rouge"]))
            metrics[f"{u}_truth_ratio"] = M.truth_ratio_score(res[u]["tr"])
            utility += [metrics[f"{u}_prob"], metrics[f"{u}_rouge"], metrics[f"{u}_truth_ratio"]]
        metrics["model_utility"] = M.harmonic_mean(utility)
        for s, v in res.items():
            if "mc" in v:
                metrics[f"{s}_mc_acc"] = float(np.mean(v["mc"]))
        arrays: dict[str, list] = {"forget_truth_ratio": f["tr"].tolist(), "forget_generated": list(f["generated"])}
        if self.holdout:
            metrics["mia_auc"] = M.auc(f["mia"], res[self.holdout]["mia"])
        if oracle is not None:
            metrics["forget_quality"] = M.forget_quality(f["tr"], np.asarray(oracle["arrays"]["forget_truth_ratio"]))
            metrics["forget_quality_log10"] = M.log10_safe(metrics["forget_quality"])
            if "mia_auc" in metrics and "mia_auc" in oracle["metrics"]:
                metrics["privleak"] = M.privleak(1.0 - metrics["mia_auc"], 1.0 - oracle["metrics"]["mia_auc"])
        return {"metrics": metrics, "arrays": arrays}

    def oracle_from_file(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """An oracle evaluation read from ``benchmark.oracle.eval_file``: this evaluator's record
        (``arrays.forget_truth_ratio``), or TOFU's own ``eval_log_forget.json`` of a retain model
        (per-question ``avg_paraphrased_loss`` and ``average_perturb_loss``), converted to it."""
        if not isinstance(record, Mapping):
            raise ValueError("is not a JSON object")
        if "arrays" in record and "forget_truth_ratio" in record["arrays"]:
            return dict(record)
        if "avg_paraphrased_loss" in record and "average_perturb_loss" in record:
            para, pert = record["avg_paraphrased_loss"], record["average_perturb_loss"]
            keys = sorted(para, key=lambda k: int(k) if str(k).isdigit() else str(k))
            p_para = np.exp(-np.array([float(para[k]) for k in keys]))
            p_pert = [np.exp(-np.asarray(pert[k], dtype=float)) for k in keys]
            tr = [
                float(M.truth_ratio(p_para[i : i + 1], p[None, :], self.truth_ratio_mean)[0])
                for i, p in enumerate(p_pert)
            ]
            return {"metrics": {}, "arrays": {"forget_truth_ratio": tr}}
        raise ValueError(
            "has neither arrays.forget_truth_ratio (an eval_oracle.json of this framework) "
            "nor TOFU's avg_paraphrased_loss/average_perturb_loss"
        )
