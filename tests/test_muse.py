"""MUSE: the loader on the fixture and on MUSE's own file layout, and the evaluator: ranges with
the tiny model, known answers with a memorising test double, PrivLeak's definition and sign."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from _stubs import MemorizerLM
from conftest import REPO, job_config

from unlearn.benchmarks.hub import DataUnavailable
from unlearn.benchmarks.muse import MuseData
from unlearn.config import build
from unlearn.data.format import PromptFormat
from unlearn.eval.muse import icl_prefix, privleak
from unlearn.evaluator import EvalContext

FIX = REPO / "tests" / "fixtures" / "muse"


def _cfg(*overrides: str, bench: str = "muse_news"):
    return job_config([f"benchmark={bench}", f"benchmark.data.local_dir={FIX}", *overrides])


@pytest.fixture(scope="module")
def splits():
    return build(_cfg("benchmark.data.chunk_words=30"), "benchmark.data").build()


def test_loader_reads_every_part_and_chunks_the_training_text(splits):
    n = {k: len(v) for k, v in splits.items()}
    assert n == {
        "forget": 8,
        "retain1": 7,
        "retain2": 5,
        "verbmem": 4,
        "forget_qa": 6,
        "retain_qa": 6,
        "forget_qa_icl": 2,
        "retain_qa_icl": 2,
        "privleak_forget": 4,
        "privleak_holdout": 4,
    }
    assert all(len(r["text"].split()) <= 30 for k in ("forget", "retain1", "retain2") for r in splits[k])
    article = json.loads((FIX / "raw" / "forget.jsonl").read_text().splitlines()[0])["text"]
    assert " ".join(r["text"] for r in splits["forget"] if r["id"].startswith("forget-0-")) == " ".join(article.split())
    assert set(splits["verbmem"][0]) == {"id", "prompt", "gt"}


def test_books_config_is_the_same_schema_under_its_own_hub_id():
    cfg = _cfg(bench="muse_books")
    data, ev = build(cfg, "benchmark.data"), build(cfg, "benchmark.eval")
    assert (data.hub_id, data.name, ev.name, ev.retrain_auc) == (
        "muse-bench/MUSE-Books",
        "muse_books",
        "muse_books",
        0.5393,
    )
    assert len(data.build()["privleak_holdout"]) == 4


def test_reads_muses_own_layout_of_json_lists_of_strings(tmp_path):
    local = tmp_path / "news"
    shutil.copytree(FIX, local)
    for part in ("privleak/forget", "privleak/holdout", "raw/forget"):
        texts = [json.loads(x)["text"] for x in (local / f"{part}.jsonl").read_text().splitlines()]
        (local / f"{part}.jsonl").unlink()
        (local / f"{part}.json").write_text(json.dumps(texts))
    s = MuseData(local_dir=str(local)).build()
    assert len(s["privleak_holdout"]) == 4 and s["privleak_holdout"][0]["text"].startswith("The Highcliff lighthouse")


def test_a_missing_field_names_the_data_set_and_the_field(tmp_path):
    bad = tmp_path / "verbmem.jsonl"
    bad.write_text(json.dumps({"prompt": "The town council"}) + "\n")
    with pytest.raises(DataUnavailable, match=r"muse_news verbmem: .* row 0 has no field 'gt'"):
        MuseData(local_dir=str(FIX), paths={"verbmem": str(bad)}).build()
    with pytest.raises(ValueError, match="chunk_words"):
        MuseData(chunk_words=0)


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_within_seconds_with_the_how_to(offline_hub):
    start = time.perf_counter()
    with pytest.raises(
        DataUnavailable,
        match=r"muse_news forget: cannot load muse-bench/MUSE-News \(raw, split forget\).*benchmark.data.paths.forget=",
    ):
        MuseData().build()
    assert time.perf_counter() - start < 10


# -- evaluator ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluator():
    return build(
        _cfg("benchmark.eval.verbmem_max_new_tokens=24", "benchmark.eval.knowmem_max_new_tokens=32"), "benchmark.eval"
    )


def test_evaluator_on_the_tiny_model_reports_muses_metrics_in_range(tiny, splits, evaluator):
    model, tok = tiny
    rec = evaluator.evaluate(EvalContext(model, tok, PromptFormat(), splits))
    m = rec["metrics"]
    for k in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak_auc"):
        assert 0 <= m[k] <= 1, k
    assert m["privleak_reference_auc"] == 0.4772  # no oracle: MUSE's published retrained AUC
    assert m["privleak"] == pytest.approx((m["privleak_auc"] - 0.4772) / 0.4772 * 100)
    assert len(rec["arrays"]["verbmem_generated"]) == 4
    same = evaluator.evaluate(EvalContext(model, tok, PromptFormat(), splits, oracle=rec))["metrics"]
    assert same["privleak"] == 0.0 and same["privleak_reference_auc"] == m["privleak_auc"]


def _memorizer(tok, splits, memorised: str) -> MemorizerLM:
    conts = {r["prompt"]: r["gt"] for r in splits["verbmem"]}
    for qa, icl in (("forget_qa", "forget_qa_icl"), ("retain_qa", "retain_qa_icl")):
        conts.update({f"{icl_prefix(splits[icl])}Question: {r['question']}\nAnswer: ": r["answer"] for r in splits[qa]})
    return MemorizerLM(tok, conts, memorised=[r["text"] for r in splits[memorised]])


def test_a_model_that_knows_the_forget_set_gets_full_verbmem_knowmem_and_privleak_minus_100(tiny, splits, evaluator):
    _, tok = tiny
    m = evaluator.evaluate(
        EvalContext(
            _memorizer(tok, splits, "privleak_forget"),
            tok,
            PromptFormat(),
            splits,
            oracle={"metrics": {"privleak_auc": 0.5}},
        )
    )["metrics"]
    assert m["knowmem_f"] == pytest.approx(1.0) and m["knowmem_r"] == pytest.approx(1.0)
    # MUSE's VerbMem reference is BOS + n − 1 tokens, one short of the n generated: just under 1
    assert 0.9 < m["verbmem_f"] < 1.0
    # it recognises every forget text: the holdout-vs-forget AUC is 0, PrivLeak -100 (MUSE's target: -99.8)
    assert m["privleak_auc"] == 0.0 and m["privleak"] == pytest.approx(-100.0)
    # the other way round (forget texts less likely than unseen ones: over-unlearning) is positive
    m = evaluator.evaluate(
        EvalContext(
            _memorizer(tok, splits, "privleak_holdout"),
            tok,
            PromptFormat(),
            splits,
            oracle={"metrics": {"privleak_auc": 0.5}},
        )
    )["metrics"]
    assert m["privleak_auc"] == 1.0 and m["privleak"] == pytest.approx(100.0)


def test_a_model_that_knows_nothing_gets_zero_verbmem(tiny, splits, evaluator):
    _, tok = tiny
    m = evaluator.evaluate(EvalContext(MemorizerLM(tok), tok, PromptFormat(), splits))["metrics"]
    assert m["verbmem_f"] == 0.0 and m["knowmem_f"] == 0.0


def test_privleak_formula_and_oracle_files(evaluator):
    assert privleak(0.3, 0.6) == pytest.approx(-50.0)
    assert evaluator.oracle_from_file({"forget_holdout_Min-40%": 0.51, "forget_holdout_Min-20%": 0.4}) == {
        "metrics": {"privleak_auc": 0.51},
        "arrays": {},
    }
    own = {"metrics": {"privleak_auc": 0.47}, "arrays": {}}
    assert evaluator.oracle_from_file(own) == own
    with pytest.raises(ValueError, match="forget_holdout_Min-40%"):
        evaluator.oracle_from_file({"metrics": {}})
    assert np.isclose(evaluator.reference_auc(None), 0.4772)
