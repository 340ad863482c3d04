"""End-to-end `python -m unlearn benchmark=<tofu|muse_news|harry_potter>` on the fixtures with a
small tiny model: target and oracle built, unlearned, evaluated, results under eval/<benchmark>/;
`task=finetune`, `task=eval` from a checkpoint with a saved oracle evaluation; the offline error."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from unlearn.benchmarks.hub import hub_reachable

pytestmark = pytest.mark.slow

FIX = REPO / "tests" / "fixtures"
SMALL_MODEL = [
    "model.spec.hidden_size=64",
    "model.spec.num_layers=2",
    "model.spec.num_heads=2",
    "model.spec.intermediate_size=128",
]
QUICK = [
    *SMALL_MODEL,
    "benchmark.finetune.lr=5e-3",
    "benchmark.finetune.batch_size=4",
    "train.steps=5",
    "logger=none",
    "trainer.enable_progress_bar=false",
]
TOFU = [
    "benchmark=tofu",
    f"benchmark.data.local_dir={FIX / 'tofu'}",
    "benchmark.finetune.epochs=15",
    "benchmark.eval.max_new_tokens=24",
    # the fixture's target also learns the utility sets, as a pretrained model knows real authors
    "benchmark.target.finetune_on=[full,real_authors,world_facts]",
    *QUICK,
]
MUSE = [
    "benchmark=muse_news",
    f"benchmark.data.local_dir={FIX / 'muse'}",
    "benchmark.data.chunk_words=30",
    "benchmark.finetune.epochs=25",
    "benchmark.eval.verbmem_max_new_tokens=24",
    "benchmark.eval.knowmem_max_new_tokens=16",
    *QUICK,
]


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def tofu_run(tmp_path_factory, cache_dir):
    work = tmp_path_factory.mktemp("tofu")
    proc = run_cli([*TOFU, "hydra.run.dir=run"], cwd=work, cache=cache_dir)
    _ok(proc)
    return work / "run", proc


def test_tofu_unlearns_and_reports_tofus_metrics(tofu_run):
    run, proc = tofu_run
    res = _results(run)
    assert res["status"] == "ok"
    for key in (
        "forget_quality",
        "forget_quality_log10",
        "model_utility",
        "forget_prob",
        "forget_rouge",
        "forget_truth_ratio",
        "retain_prob",
        "real_authors_prob",
        "real_authors_rouge",
        "real_authors_truth_ratio",
        "world_facts_prob",
        "world_facts_truth_ratio",
    ):
        assert f"eval/tofu/{key}" in res, key
    assert res["target/tofu/forget_prob"] > 2 * res["oracle/tofu/forget_prob"], (
        "the target learned the forget authors, the oracle did not"
    )
    assert res["eval/tofu/forget_prob"] < res["target/tofu/forget_prob"]
    assert 0 < res["target/tofu/model_utility"] <= 1 and 0 <= res["eval/tofu/forget_quality"] <= 1
    assert len(json.loads((run / "eval_unlearned.json").read_text())["arrays"]["forget_truth_ratio"]) == 12
    assert "model_utility" in proc.stdout  # the results table


def test_tofu_finetune_task_builds_target_and_oracle_then_eval_starts_from_a_checkpoint(tofu_run, tmp_path, cache_dir):
    proc = run_cli([*TOFU, "task=finetune", "hydra.run.dir=ft"], cwd=tmp_path, cache=cache_dir)
    _ok(proc)
    assert "fine-tuning the" not in proc.stderr, "the unlearning run already built (and cached) both models"
    ft = _results(tmp_path / "ft")
    target = Path(ft["target/path"])
    assert (target / "config.json").exists() and Path(ft["oracle/path"]).exists()
    assert ft["target/tofu/forget_prob"] == pytest.approx(_results(tofu_run[0])["target/tofu/forget_prob"])
    # a given checkpoint and a saved oracle evaluation instead of an oracle model
    oracle_file = tofu_run[0] / "eval_oracle.json"
    proc = run_cli(
        [
            *TOFU,
            "task=eval",
            f"benchmark.target.path={target}",
            f"benchmark.oracle.eval_file={oracle_file}",
            "hydra.run.dir=ev",
        ],
        cwd=tmp_path,
        cache=cache_dir,
    )
    _ok(proc)
    ev = _results(tmp_path / "ev")
    assert ev["eval/tofu/forget_quality"] == pytest.approx(_results(tofu_run[0])["target/tofu/forget_quality"])


def test_muse_news_unlearns_and_reports_muses_metrics(tmp_path, cache_dir):
    proc = run_cli([*MUSE, "hydra.run.dir=run"], cwd=tmp_path, cache=cache_dir)
    _ok(proc)
    res = _results(tmp_path / "run")
    assert res["status"] == "ok"
    for key in ("verbmem_f", "knowmem_f", "knowmem_r", "privleak", "privleak_auc", "privleak_reference_auc"):
        assert f"eval/muse_news/{key}" in res, key
    assert res["target/muse_news/verbmem_f"] > res["oracle/muse_news/verbmem_f"], (
        "the target memorised the forget articles"
    )
    assert res["eval/muse_news/privleak_reference_auc"] == res["oracle/muse_news/privleak_auc"]
    assert res["target/muse_news/privleak"] < 0, "the target recognises its forget texts: PrivLeak below 0"
    assert "verbmem_f" in proc.stdout


def test_harry_potter_runs_on_an_invented_book(tmp_path, cache_dir):
    hp = [
        "benchmark=harry_potter",
        f"benchmark.data.local_dir={FIX / 'harry_potter'}",
        "benchmark.data.chunk_words=40",
        "benchmark.finetune.epochs=40",
        "benchmark.eval.max_new_tokens=24",
        *QUICK,
    ]
    proc = run_cli([*hp, "hydra.run.dir=run"], cwd=tmp_path, cache=cache_dir)
    _ok(proc)
    res = _results(tmp_path / "run")
    assert res["status"] == "ok"
    for key in ("completion_bleu", "completion_rouge", "general_ppl", "forget_ppl", "collapsed", "collapsed_ppl"):
        assert f"eval/harry_potter/{key}" in res, key
    assert res["target/harry_potter/collapsed"] == 0.0 and res["target/harry_potter/completion_bleu"] > 0
    assert res["target/harry_potter/forget_ppl"] < res["target/harry_potter/general_ppl"], "the target learned the book"
    assert res["eval/harry_potter/forget_ppl"] > res["target/harry_potter/forget_ppl"], (
        "unlearning made the book less likely"
    )

    # a diverging run is still evaluated and reported as collapsed, not just "diverged"
    proc = run_cli([*hp, "train.max_abs_loss=1e-3", "hydra.run.dir=diverged"], cwd=tmp_path, cache=cache_dir)
    _ok(proc)
    res = _results(tmp_path / "diverged")
    assert res["status"] == "diverged" and "limit" in res["reason"]
    assert res["eval/harry_potter/collapsed"] == 1.0 and res["eval/harry_potter/collapsed_diverged"] == 1.0
    assert "eval/harry_potter/completion_bleu" in res and "eval/harry_potter/general_ppl" in res


@pytest.mark.timeout(120)
def test_offline_without_local_data_fails_fast_with_the_how_to(tmp_path, cache_dir):
    if hub_reachable():
        pytest.skip("the hub is reachable here: this checks the offline path")
    start = time.perf_counter()
    proc = run_cli(["benchmark=tofu", "logger=none", "hydra.run.dir=run"], cwd=tmp_path, cache=cache_dir)
    assert proc.returncode == 2
    assert (
        "data unavailable: tofu forget: cannot load locuslab/TOFU" in proc.stderr
        and "benchmark.data.paths.forget=" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and "fine-tuning" not in proc.stderr
    assert _results(tmp_path / "run")["status"] == "failed"
    assert time.perf_counter() - start < 60  # interpreter start-up included
