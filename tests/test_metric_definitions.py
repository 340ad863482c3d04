"""Known-answer tests pinning whose definition each headline metric follows (README, "Metrics"):
TOFU's truth ratio, MUSE's PrivLeak sign on every benchmark, open-unlearning's TOFU MIA, the
Min-K%++ variance floor, MUSE's VerbMem reference, the SAGO presets' PCGrad ε, and collapse."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import REPO, compose, job_config

from unlearn.config import ConfigError, build
from unlearn.data.format import PromptFormat
from unlearn.eval import metrics as M
from unlearn.evaluator import EvalContext

FIX = REPO / "tests" / "fixtures" / "tofu"


def _tofu(*overrides: str):
    return job_config(["benchmark=tofu", f"benchmark.data.local_dir={FIX}", *overrides])


# -- 1. truth ratio: TOFU's code (geometric mean of the perturbed answers' probabilities) -----------
def test_truth_ratio_is_tofus_geometric_mean():
    p_para, p_pert = np.exp([-2.0]), np.exp([[-1.0, -3.0]])  # paraphrase loss 2, perturbed losses 1 and 3
    assert M.truth_ratio(p_para, p_pert)[0] == pytest.approx(1.0)
    assert M.truth_ratio(p_para, p_pert, "arithmetic")[0] == pytest.approx(
        1.5431, abs=1e-4
    )  # the paper's printed formula
    with pytest.raises(ValueError, match="truth-ratio mean must be one of .*got 'harmonic'"):
        M.truth_ratio(p_para, p_pert, "harmonic")


def test_tofu_evaluator_and_oracle_logs_use_the_geometric_truth_ratio():
    ev = build(_tofu(), "benchmark.eval")
    assert ev.truth_ratio_mean == "geometric"
    log = {"avg_paraphrased_loss": {"0": 2.0}, "average_perturb_loss": {"0": [1.0, 3.0]}}
    assert ev.oracle_from_file(log)["arrays"]["forget_truth_ratio"] == pytest.approx(
        [1.0]
    )  # TOFU's exp(mean pert − para)
    with pytest.raises(
        ConfigError,
        match=r"benchmark.eval: benchmark.eval.truth_ratio_mean must be one of "
        r"\['geometric', 'arithmetic'\], got 'mean'",
    ):
        build(_tofu("benchmark.eval.truth_ratio_mean=mean"), "benchmark.eval")


def test_retain_truth_ratio_score_takes_the_geometric_truth_ratio():
    r = M.truth_ratio(np.exp([-1.0]), np.exp([[-0.5, -2.5]]))  # R_geo = e^-0.5; R_arith = 0.8417
    assert M.truth_ratio_score(r) == pytest.approx(1 - math.exp(-0.5))  # 0.3935, not 0.1583


# -- 2. PrivLeak: MUSE's sign on the QA benchmarks; TOFU's MIA as open-unlearning's ----------------
def _res(mia_forget, mia_holdout):
    one = {
        "prob": np.full(2, 0.5),
        "rouge": np.full(2, 0.5),
        "tr": np.full(2, 0.5),
        "generated": ["", ""],
        "mia": np.zeros(2),
    }
    return {
        "forget": {**one, "mia": np.asarray(mia_forget, float)},
        "retain": one,
        "general": one,
        "holdout": {"mia": np.asarray(mia_holdout, float)},
    }


def test_qa_privleak_has_muses_sign():
    ev = build(job_config([]), "benchmark.eval")  # toy
    res = _res(np.arange(1, 11), [1.5])  # forget-positive AUC 0.9 (open-unlearning's mia_auc)
    oracle = {"metrics": {"mia_auc": 0.45}, "arrays": {"forget_truth_ratio": [0.5, 0.5]}}
    m = ev._summarize(res, oracle)["metrics"]
    assert m["mia_auc"] == pytest.approx(0.9)
    assert m["privleak"] == pytest.approx((0.1 - 0.55) / 0.55 * 100)  # −81.8: under-unlearned, as MUSE's
    assert M.privleak(0.1, 0.55) == pytest.approx(-81.818, abs=1e-3)


def test_tofu_loads_the_matching_holdout_split():
    splits = build(_tofu(), "benchmark.data").build()
    assert len(splits["holdout"]) == 12 and {"question", "answer"} <= set(splits["holdout"][0])
    assert not {r["question"] for r in splits["holdout"]} & {r["question"] for r in splits["full"]}
    assert len(build(_tofu("benchmark.split=forget01"), "benchmark.data").build()["holdout"]) == 4


def test_tofu_mia_is_open_unlearnings_min_k_without_the_last_token():
    ev = build(_tofu(), "benchmark.eval")
    assert (ev.holdout, ev.mia_attack, ev.min_k, ev.mia_drop_last_token) == ("holdout", "min_k", 0.4, True)
    # NLLs 1..6: the last (6) dropped, then the int(0.4 * 5) = 2 least likely: log-probs −5, −4
    assert ev.mia_score(np.arange(1.0, 7.0)) == pytest.approx(-4.5)
    with pytest.raises(
        ConfigError, match=r"benchmark.eval.mia_attack must be one of \['loss', 'min_k'\], got 'gradnorm'"
    ):
        build(_tofu("benchmark.eval.mia_attack=gradnorm"), "benchmark.eval")


def test_tofu_reports_mia_and_privleak_on_the_fixtures(tiny):
    model, tok = tiny
    ev = build(_tofu("benchmark.eval.max_new_tokens=2", "+benchmark.eval.max_rows=4"), "benchmark.eval")
    splits = build(_tofu(), "benchmark.data").build()
    rec = ev.evaluate(EvalContext(model, tok, PromptFormat(), splits))
    assert 0 <= rec["metrics"]["mia_auc"] <= 1 and "privleak" not in rec["metrics"]
    again = ev.evaluate(EvalContext(model, tok, PromptFormat(), splits, oracle=rec))
    assert again["metrics"]["privleak"] == pytest.approx(0.0)  # the oracle's own AUC


def test_an_answer_cut_off_by_max_length_is_an_error_not_a_probability_of_one(tiny):
    """With no answer token left, exp(-0/1) = 1 entered forget_prob, the truth ratio and model
    utility as a perfect answer; it now stops the evaluation (of the target first, so before any
    unlearning), naming the key."""
    model, tok = tiny
    splits = build(_tofu(), "benchmark.data").build()
    fine = build(_tofu("benchmark.eval.max_new_tokens=2", "+benchmark.eval.max_rows=4"), "benchmark.eval")
    assert 0 < fine.evaluate(EvalContext(model, tok, PromptFormat(), splits))["metrics"]["forget_prob"] < 1
    short = build(
        _tofu("benchmark.eval.max_new_tokens=2", "+benchmark.eval.max_rows=4", "benchmark.eval.max_length=5"),
        "benchmark.eval",
    )
    with pytest.raises(ConfigError, match=r"benchmark\.eval\.max_length=5 leaves no answer token in 4 of 4 rows"):
        short.evaluate(EvalContext(model, tok, PromptFormat(), splits))


# -- 3. Min-K%++: a variance floor that cannot blow up a peaked step -------------------------------
def test_minkpp_variance_floor_is_open_unlearnings():
    from unlearn.eval.scoring import MINKPP_VAR_FLOOR, _minkpp_tokens

    logits = torch.tensor([[[0.0, -40.0, -40.0]]])  # one peaked step (variance ~1e-14), the unlikely token observed
    tgt = torch.tensor([[1]])
    nll = torch.nn.functional.cross_entropy(logits[0], tgt[0], reduction="none").view(1, 1)
    z = float(_minkpp_tokens(logits, tgt, nll))
    logp = logits.log_softmax(-1)
    mu = float((logp.exp() * logp).sum())
    assert MINKPP_VAR_FLOOR == 1e-6
    assert z == pytest.approx((-float(nll) - mu) / math.sqrt(1e-6), rel=1e-5)  # ≈ −4e4, not −4e7
    assert abs(z) < 1e5


# -- 4. VerbMem: MUSE's reference is the first 128 tokens *with* BOS ------------------------------
def test_verbmem_reference_counts_bos_as_muse_does(tiny):
    from unlearn.eval.muse import MUSEEvaluator

    _, tok = tiny
    gt = "the quick brown fox jumps over the lazy dog " * 3
    ids = tok(gt)["input_ids"]
    assert ids[0] == tok.bos_token_id
    seen = {}

    def fake_greedy(model, tokenizer, prompts, n, *a, **k):
        return ["x"] * len(prompts)

    import unlearn.eval.muse as muse

    ev = MUSEEvaluator(verbmem_max_new_tokens=8)
    orig = muse.greedy
    muse.greedy = fake_greedy
    try:
        orig_rouge = muse.M.rouge_l
        muse.M.rouge_l = lambda outs, refs, *a, **k: (seen.setdefault("refs", refs), np.zeros(len(refs)))[1]
        try:
            ev.verbmem_scores(torch.nn.Linear(1, 1), tok, [{"prompt": "p", "gt": gt}])
        finally:
            muse.M.rouge_l = orig_rouge
    finally:
        muse.greedy = orig
    assert seen["refs"] == [tok.decode(ids[:8], skip_special_tokens=True)]  # BOS + 7 tokens
    assert seen["refs"][0] != tok.decode(tok(gt, add_special_tokens=False)["input_ids"][:8])


# -- 5. the SAGO presets' PCGrad ε is the official code's ------------------------------------------
@pytest.mark.parametrize(
    "preset",
    sorted(
        p.relative_to(REPO / "conf" / "experiment").with_suffix("").as_posix()
        for p in (REPO / "conf" / "experiment").glob("sago_*/*pcgrad*.yaml")
    ),
)
def test_sago_pcgrad_presets_use_the_official_eps(preset):
    cfg = compose([f"experiment={preset}"])
    assert cfg.combiner._target_ == "unlearn.combiners.PCGrad" and cfg.combiner.eps == 1e-10


# -- issue 13: collapse ---------------------------------------------------------------------------
def test_collapse_check_flags_utility_that_fell_to_nothing():
    check = build(job_config([]), "benchmark.collapse")
    target = {"metrics": {"model_utility": 0.6}}
    rec = check.apply({"metrics": {"model_utility": 0.0, "forget_rouge": 0.0}, "arrays": {}}, target)
    assert rec["metrics"]["collapsed"] == 1.0 and rec["metrics"]["collapsed_utility"] == 1.0
    assert "model_utility 0 kept under 0.1 of the target's 0.6" in rec["notes"]["collapse"]
    fine = check.apply({"metrics": {"model_utility": 0.5}, "arrays": {}}, target)
    assert fine["metrics"]["collapsed"] == 0.0 and fine["notes"]["collapse"] is None
    nan = check.apply({"metrics": {"model_utility": float("nan")}, "arrays": {}}, target)
    assert nan["metrics"]["collapsed_nonfinite"] == 1.0


def test_collapse_floor_is_chance_on_multiple_choice_and_loops_count():
    from unlearn.eval.collapse import CollapseCheck

    wmdp = build(job_config(["benchmark=wmdp_bio"]), "benchmark.collapse")
    assert wmdp.limit({"metrics": {"mmlu_acc": 0.55}}) == pytest.approx(0.28)
    assert wmdp.reasons({"metrics": {"mmlu_acc": 0.26}}, {"metrics": {"mmlu_acc": 0.55}})
    # a target at or under chance has no margin to lose: the unchanged model is not "collapsed"
    for at_chance in (0.25, 0.1667):
        assert wmdp.limit({"metrics": {"mmlu_acc": at_chance}}) is None
        assert not wmdp.reasons({"metrics": {"mmlu_acc": at_chance}}, {"metrics": {"mmlu_acc": at_chance}})
    muse = CollapseCheck(utility="knowmem_r", generated=("knowmem_r_generated",))
    assert "repetition" in muse.reasons(
        {"metrics": {"knowmem_r": 0.4}, "arrays": {"knowmem_r_generated": ["the the the the the the"]}}
    )
    with pytest.raises(ConfigError, match=r"benchmark.collapse.min_fraction must be in \[0, 1\), got 1.5"):
        build(job_config(["benchmark.collapse.min_fraction=1.5"]), "benchmark.collapse")


def test_every_benchmark_has_the_shared_collapse_check():
    for p in sorted((REPO / "conf" / "benchmark").glob("*.yaml")):
        cfg = job_config([f"benchmark={p.stem}"])
        if p.stem == "harry_potter":  # its evaluator reports collapse itself (perplexity, loops, divergence)
            continue
        assert cfg.benchmark.collapse._target_ == "unlearn.eval.collapse.CollapseCheck", p.stem


def test_a_run_whose_utility_collapses_ends_collapsed(tmp_path, monkeypatch, tiny):
    from unlearn import phases, pipeline
    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    s = build_job(
        job_config(["logger=none", "train.checkpoint_every=0", f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run")
    )
    model, tok = tiny

    class Evaluator:  # the toy evaluator's record shape: utility 0 after unlearning, losses finite
        reports_diverged = False

        def evaluate(self, ctx):
            return {"metrics": {"model_utility": 0.0, "forget_rouge": 0.0}, "arrays": {}}

    s.evaluator = Evaluator()
    ref = SimpleNamespace(load=lambda s: (model, tok), key="k", path=None)
    monkeypatch.setattr(pipeline, "_load_splits", lambda s: {})
    monkeypatch.setattr(phases, "reference_model", lambda s, splits, role: ref)
    monkeypatch.setattr(phases, "oracle_record", lambda s, splits: None)
    monkeypatch.setattr(
        phases,
        "cached_evaluation",
        lambda s, ref, splits, role, oracle=None: {"metrics": {"model_utility": 0.62}, "arrays": {}},
    )
    monkeypatch.setattr(phases, "unlearn", lambda *a, **k: SimpleNamespace(diverged=False, steps_done=3))
    res = pipeline.run_unlearn(s, {"name": "ga"})
    assert res["status"] == "collapsed" and "model_utility" in res["reason"]
    assert res["eval/toy/collapsed"] == 1.0 and res["eval/toy/collapsed_utility"] == 1.0


@pytest.mark.parametrize("reports", [False, True])
def test_a_diverged_run_is_evaluated_only_when_its_evaluator_reports_divergence(tmp_path, monkeypatch, tiny, reports):
    from unlearn import phases, pipeline
    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    s = build_job(
        job_config(["logger=none", "train.checkpoint_every=0", f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run")
    )
    model, tok = tiny
    seen = []

    class Evaluator:
        reports_diverged = reports

        def evaluate(self, ctx):
            seen.append(ctx.diverged)
            return {"metrics": {"collapsed": 1.0}, "arrays": {}}

    s.evaluator = Evaluator()
    s.step.guard.reason = "train/loss/forget=nan at step 2"
    ref = SimpleNamespace(load=lambda s: (model, tok), key="k", path=None)
    monkeypatch.setattr(pipeline, "_load_splits", lambda s: {})
    monkeypatch.setattr(phases, "reference_model", lambda s, splits, role: ref)
    monkeypatch.setattr(phases, "oracle_record", lambda s, splits: None)
    monkeypatch.setattr(phases, "cached_evaluation", lambda *a, **k: {"metrics": {}, "arrays": {}})
    monkeypatch.setattr(phases, "unlearn", lambda *a, **k: SimpleNamespace(diverged=True, steps_done=2))
    res = pipeline.run_unlearn(s, {"name": "ga"})
    assert res["status"] == "diverged" and "nan" in res["reason"]
    assert seen == (["train/loss/forget=nan at step 2"] if reports else [])  # the reason reaches the evaluator
    assert ("eval/toy/collapsed" in res) is reports


# -- 6. RWKU's probes: ROUGE-L recall without a stemmer (its `rouge` package) -----------------------
def test_rwku_probe_rouge_does_not_stem(tiny, monkeypatch):
    import unlearn.eval.rwku as rwku

    _, tok = tiny
    monkeypatch.setattr(rwku, "greedy", lambda model, tokenizer, prompts, *a, **k: ["she writes novels"] * len(prompts))
    ev = rwku.RWKUEvaluator()
    score, _ = ev._probes(
        None, tok, PromptFormat(), [{"query": "What does she write? ___", "answer": "novel"}], "forget_level2"
    )
    assert score == 0.0  # TOFU's stemmed ROUGE would give 1.0 ("novels" -> "novel")


# -- 6. Harry Potter: SOUL/FLAT's eval_leakage_rate (mean per-prompt BLEU, stemmed ROUGE-L recall) --
def test_copyright_bleu_is_the_mean_of_per_prompt_bleus():
    import sacrebleu

    preds, refs = ["the cat sat on the mat today", "a b c d"], ["the cat sat on the mat", "w x y z"]
    assert M.mean_example_bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu([preds[0]], [[refs[0]]]).score / 2)
    assert M.mean_example_bleu(preds, refs) != pytest.approx(M.bleu(preds, refs))  # not one corpus BLEU


def test_copyright_rouge_is_stemmed_recall(tiny, monkeypatch):
    import unlearn.eval.copyright as cr

    _, tok = tiny
    ev = cr.CopyrightEvaluator(forget_text=None)
    monkeypatch.setattr(
        cr, "greedy", lambda model, tokenizer, prompts, *a, **k: ["wizards walked home slowly and then"] * len(prompts)
    )
    monkeypatch.setattr(cr, "text_perplexity", lambda *a, **k: 10.0)
    splits = {"prompts": [{"prompt": "p", "continuation": "the wizard walked"}], "general": [{"text": "x"}]}
    m = ev.evaluate(EvalContext(torch.nn.Linear(1, 1), tok, PromptFormat(), splits))["metrics"]
    assert m["completion_rouge"] == pytest.approx(2 / 3)  # recall, "wizards" -> "wizard"; F1 unstemmed would be 0.2


def test_copyright_counts_a_diverged_run_as_collapsed(tiny, monkeypatch):
    import unlearn.eval.copyright as cr

    _, tok = tiny
    monkeypatch.setattr(cr, "greedy", lambda model, tokenizer, prompts, *a, **k: ["one two three four"] * len(prompts))
    monkeypatch.setattr(cr, "text_perplexity", lambda *a, **k: 10.0)
    splits = {"prompts": [{"prompt": "p", "continuation": "one two three"}], "general": [{"text": "x"}]}
    ev = cr.CopyrightEvaluator(forget_text=None)
    ok = ev.evaluate(EvalContext(torch.nn.Linear(1, 1), tok, PromptFormat(), splits))
    why = "train/loss/forget=nan at step 2"
    bad = ev.evaluate(EvalContext(torch.nn.Linear(1, 1), tok, PromptFormat(), splits, diverged=why))
    assert ok["metrics"]["collapsed"] == 0.0 and "collapsed_diverged" not in ok["metrics"]
    assert bad["metrics"]["collapsed"] == bad["metrics"]["collapsed_diverged"] == 1.0
    assert bad["notes"]["collapse"] == f"training diverged ({why})"
