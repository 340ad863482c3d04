"""TOFU: the loader on the fixture (schema, splits, overrides, offline failure) and the evaluator
with the tiny model (ranges, TOFU's definitions, oracle files)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from conftest import REPO, job_config
from scipy import stats

from unlearn.benchmarks.hub import DataUnavailable
from unlearn.benchmarks.tofu import TofuData
from unlearn.config import ConfigError, build
from unlearn.data.format import PromptFormat
from unlearn.eval.scoring import normalized_prob, score_answers
from unlearn.evaluator import EvalContext
from unlearn.job import build_job
from unlearn.rundir import RunDir

FIX = REPO / "tests" / "fixtures" / "tofu"


def _cfg(*overrides: str):
    return job_config(["benchmark=tofu", f"benchmark.data.local_dir={FIX}", *overrides])


@pytest.fixture(scope="module")
def splits():
    return build(_cfg(), "benchmark.data").build()


def test_loader_reads_every_part_of_the_fixture(splits):
    assert {k: len(v) for k, v in splits.items()} == {
        "forget": 12,
        "retain": 28,
        "forget_perturbed": 12,
        "retain_perturbed": 16,
        "real_authors": 5,
        "world_facts": 5,
        "full": 40,
        "holdout": 12,
    }
    assert all(isinstance(r["perturbed_answer"], list) for r in splits["forget_perturbed"])
    assert splits["forget"][0]["id"] == "forget-0" and len({r["id"] for r in splits["full"]}) == 40
    full = {r["question"] for r in splits["full"]}
    assert {r["question"] for r in splits["forget"]} | {r["question"] for r in splits["retain"]} == full
    assert [r["question"] for r in splits["forget"]] == [r["question"] for r in splits["forget_perturbed"]]


def test_the_split_option_picks_the_matching_retain_and_eval_sets():
    data = build(_cfg("benchmark.split=forget01"), "benchmark.data")
    assert data.split == "forget01"
    s = data.build()
    assert (len(s["forget"]), len(s["retain"]), len(s["forget_perturbed"])) == (4, 36, 4)


def test_a_bad_split_names_the_key(tmp_path):
    cfg = _cfg("benchmark.split=forget20", f"paths.cache_dir={tmp_path}")
    with pytest.raises(
        ConfigError, match=r"benchmark.split must be one of \['forget01', 'forget05', 'forget10'\], got 'forget20'"
    ):
        build_job(cfg, RunDir(tmp_path / "run"))


def test_a_missing_field_names_the_data_set_and_the_field(tmp_path):
    local = tmp_path / "tofu"
    shutil.copytree(FIX, local)
    rows = [json.loads(x) for x in (local / "forget10_perturbed.jsonl").read_text().splitlines()]
    del rows[3]["paraphrased_answer"]
    (local / "forget10_perturbed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataUnavailable, match=r"tofu forget_perturbed: .* row 3 has no field 'paraphrased_answer'"):
        TofuData(local_dir=str(local)).build()
    rows[3]["paraphrased_answer"], rows[3]["perturbed_answer"] = "x", "not a list"
    (local / "forget10_perturbed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        DataUnavailable, match=r"tofu forget_perturbed: row 3 field 'perturbed_answer' must be a non-empty list"
    ):
        TofuData(local_dir=str(local)).build()


def test_a_per_part_path_wins_over_the_folder_and_unknown_parts_are_refused(tmp_path):
    one = tmp_path / "mine.jsonl"
    one.write_text(json.dumps({"question": "Who?", "answer": "Me."}) + "\n")
    s = TofuData(local_dir=str(FIX), paths={"forget": str(one)}).build()
    assert s["forget"] == [{"question": "Who?", "answer": "Me.", "id": "forget-0"}]
    with pytest.raises(ValueError, match=r"benchmark.data.paths.forgett: tofu has no part 'forgett'"):
        TofuData(local_dir=str(FIX), paths={"forgett": str(one)})


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_within_seconds_with_the_how_to(offline_hub):
    start = time.perf_counter()
    with pytest.raises(DataUnavailable) as e:
        TofuData().build()
    assert time.perf_counter() - start < 10
    msg = str(e.value)
    assert "tofu forget: cannot load locuslab/TOFU (forget10, split train)" in msg
    assert "benchmark.data.paths.forget=/path/to/file.jsonl" in msg and "benchmark.data.local_dir" in msg


# -- evaluator ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluator():
    return build(_cfg("benchmark.eval.max_new_tokens=8"), "benchmark.eval")


@pytest.fixture(scope="module")
def record(tiny, splits, evaluator):
    model, tok = tiny
    return evaluator.evaluate(EvalContext(model, tok, PromptFormat(), splits))


def test_evaluator_reports_tofus_metrics_in_range(record):
    m = record["metrics"]
    for k in (
        "forget_prob",
        "forget_rouge",
        "retain_prob",
        "retain_rouge",
        "retain_truth_ratio",
        "real_authors_prob",
        "world_facts_prob",
        "model_utility",
    ):
        assert 0 <= m[k] <= 1, k
    assert 0 < m["forget_truth_ratio"] <= 1
    assert len(record["arrays"]["forget_truth_ratio"]) == 12
    nine = [m[f"{s}_{k}"] for s in ("retain", "real_authors", "world_facts") for k in ("prob", "rouge", "truth_ratio")]
    assert m["model_utility"] == pytest.approx(stats.hmean(nine) if min(nine) > 0 else 0.0)


def test_utility_sets_normalise_over_options_and_compare_the_true_answer(tiny, splits, evaluator):
    model, tok = tiny
    rows = splits["real_authors"]
    res = evaluator._qa_set(model, tok, PromptFormat(), rows, "real_authors", normalize_prob=True)
    s, n = score_answers(model, tok, PromptFormat(), [(r["question"], r["answer"]) for r in rows])
    p_true = normalized_prob(s, n)
    s, n = score_answers(model, tok, PromptFormat(), [(r["question"], a) for r in rows for a in r["perturbed_answer"]])
    p_pert = normalized_prob(s, n).reshape(len(rows), -1)
    assert res["prob"] == pytest.approx(p_true / (p_true + p_pert.sum(1)))
    assert res["tr"] == pytest.approx(np.exp(np.log(p_pert).mean(1)) / p_true)  # TOFU: the answer, not a paraphrase


def test_forget_quality_against_oracles(record, evaluator):
    tr = np.asarray(record["arrays"]["forget_truth_ratio"])
    res = {
        evaluator.forget: {
            "prob": np.ones(12),
            "rouge": np.ones(12),
            "tr": tr,
            "generated": [""] * 12,
            "mia": np.zeros(12),
        },
        evaluator.holdout: {"mia": np.zeros(3)},
    }
    for k in (evaluator.retain, *evaluator.utility):
        res[k] = {
            "prob": np.full(3, 0.5),
            "rouge": np.full(3, 0.5),
            "tr": np.full(3, 0.5),
            "generated": [""] * 3,
            "mia": np.zeros(3),
        }
    assert evaluator._summarize(res, record)["metrics"]["forget_quality"] == pytest.approx(1.0)
    far = {"metrics": {}, "arrays": {"forget_truth_ratio": (tr * 1e6 + 1e3).tolist()}}
    assert evaluator._summarize(res, far)["metrics"]["forget_quality"] < 1e-4


def test_oracle_file_in_tofus_own_format_becomes_truth_ratios(evaluator):
    log = {
        "avg_paraphrased_loss": {"1": 2.0, "0": 1.0},
        "average_perturb_loss": {"0": [2.0, 3.0], "1": [2.0, 2.0]},
        "avg_gt_loss": {"0": 0.5, "1": 0.5},
    }
    rec = evaluator.oracle_from_file(log)
    expected = [np.exp(-2.5) / np.exp(-1), 1.0]  # TOFU's exp(mean perturbed loss − paraphrased loss), inverted
    assert rec["arrays"]["forget_truth_ratio"] == pytest.approx(expected)
    own = {"metrics": {}, "arrays": {"forget_truth_ratio": [0.5]}}
    assert evaluator.oracle_from_file(own) == own
    with pytest.raises(ValueError, match="avg_paraphrased_loss"):
        evaluator.oracle_from_file({"metrics": {}})


def test_oracle_eval_file_errors_name_the_key(tmp_path):
    from unlearn.phases import oracle_record

    bad = tmp_path / "oracle.json"
    bad.write_text(json.dumps({"metrics": {"x": 1}}))
    cfg = _cfg(f"benchmark.oracle.eval_file={bad}", f"paths.cache_dir={tmp_path}")
    s = build_job(cfg, RunDir(tmp_path / "run"))
    with pytest.raises(
        ConfigError, match=r"benchmark.oracle.eval_file: .*oracle.json has neither arrays.forget_truth_ratio"
    ):
        oracle_record(s, {})
