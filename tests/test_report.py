"""`python -m unlearn.report` on hand-made run directories with known values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unlearn.report.__main__ import main
from unlearn.report.pareto import pareto_mask
from unlearn.rundir import write_json


def _run(root, name, method, combiner, rate, seed, fq, mu, status="ok", reason=None):
    d = root / name
    cfg = {"seed": seed, "method": {"name": method}, "combiner": {"_target_": f"unlearn.combiners.{combiner}"},
           "smoothing": {"rate": rate}, "model": {"name": "tiny"},
           "benchmark": {"name": "toy", "report": {"forget": "forget_quality", "forget_higher_is_better": True, "forget_log": True,
                                                    "utility": "model_utility", "table": ["forget_quality", "model_utility"]}}}
    res = {"status": status, "reason": reason}
    if status == "ok":
        res.update({"eval/toy/forget_quality": fq, "eval/toy/model_utility": mu, "eval/toy/forget_rouge": 0.5})
    write_json(d / "config.json", cfg)
    write_json(d / "results.json", res)
    write_json(d / "provenance.json", {"overrides": [f"method={method}", f"smoothing.rate={rate}", f"seed={seed}"]})


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun" / "grid"
    k = 0
    for method, combiner in (("sga", "Sum"), ("sago", "SAGO")):
        for rate in (-0.5, 0.5):
            for seed in (0, 1, 2):
                fq = 0.1 * (seed + 1) if method == "sga" else 0.5
                mu = 0.4 + (0.1 if method == "sago" else 0.0) + 0.01 * rate
                _run(root, f"{k}_job", method, combiner, rate, seed, fq, mu)
                k += 1
    _run(root, f"{k}_job", "sago", "SAGO", 0.5, 3, 0, 0, status="diverged", reason="train/loss/forget=nan at step 3")
    _run(root, f"{k + 1}_job", "sga", "Sum", 0.5, 3, 0, 0, status="failed", reason="config error: optim.lr must be > 0")
    (root / f"{k}_job" / "checkpoints").mkdir()  # must not be mistaken for a run
    return root


def test_report_aggregates_seeds_and_lists_unfinished_runs(sweep, capsys):
    assert main([str(sweep)]) == 0
    out = sweep / "report"
    table = pd.read_csv(out / "table_toy.csv")
    assert len(table) == 4
    sga = table[(table["method"] == "sga") & (table["rate"] == -0.5)].iloc[0]
    assert sga["n"] == 3
    assert sga["eval/toy/forget_quality_mean"] == pytest.approx(0.2)
    assert sga["eval/toy/forget_quality_std"] == pytest.approx(np.std([0.1, 0.2, 0.3], ddof=1))
    sago = table[(table["method"] == "sago") & (table["rate"] == 0.5)].iloc[0]
    assert sago["n"] == 3 and sago["n_diverged"] == 1
    md = (out / "report.md").read_text()
    assert "| method | combiner | rate | n | forget_quality | model_utility |" in md
    assert "0.2 ± 0.1" in md
    assert "optim.lr must be > 0" in md and "diverged" in md
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 14
    png = out / "pareto_toy.png"
    assert png.exists() and png.stat().st_size > 20_000


def test_report_refuses_a_folder_without_runs(tmp_path):
    with pytest.raises(SystemExit, match="no run directories"):
        main([str(tmp_path)])


def test_pareto_mask_keeps_only_non_dominated_points():
    x = np.array([1.0, 2.0, 3.0, 2.0, 0.5])
    y = np.array([3.0, 2.0, 1.0, 1.0, 3.0])
    # higher is better on both: (2,1) is dominated by (2,2) and (3,1); (0.5,3) by (1,3)
    assert pareto_mask(x, y, True, True).tolist() == [True, True, True, False, False]
    # lower x is better: (0.5, 3) is at least as good as every other point on both axes
    assert pareto_mask(x, y, False, True).tolist() == [False, False, False, False, True]
    # lower is better on both: (0.5, 3), (2, 1) and (3, 1)? (3,1) is dominated by (2,1)
    assert pareto_mask(x, y, False, False).tolist() == [False, False, False, True, True]


BENCHMARKS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "benchmark").glob("*.yaml"))


@pytest.mark.parametrize("bench", BENCHMARKS)
def test_every_benchmark_plots_metrics_its_evaluator_defines_in_the_right_direction(bench):
    from hydra.utils import get_class

    from conftest import compose

    cfg = compose([f"benchmark={bench}"]).benchmark
    rep = cfg.get("report")
    assert rep, f"conf/benchmark/{bench}.yaml has no report block"
    directions = get_class(cfg.eval._target_)().directions
    assert directions[rep.forget] == (1 if rep.get("forget_higher_is_better", False) else -1), rep.forget
    assert directions[rep.utility] == (1 if rep.get("utility_higher_is_better", True) else -1), rep.utility


def test_a_lower_is_better_utility_is_plotted_and_fronted_that_way(tmp_path):
    root = tmp_path / "hp"
    for k, (method, rouge, ppl) in enumerate((("ga", 0.1, 50.0), ("gd", 0.2, 20.0), ("npo", 0.3, 40.0))):
        d = root / f"{k}_job"
        write_json(d / "config.json", {"seed": 0, "method": {"name": method}, "combiner": {"_target_": "unlearn.combiners.Sum"},
                                       "smoothing": {"rate": 0}, "model": {"name": "tiny"},
                                       "benchmark": {"name": "harry_potter", "report": {"forget": "completion_rouge", "utility": "general_ppl", "utility_higher_is_better": False}}})
        write_json(d / "results.json", {"status": "ok", "eval/harry_potter/completion_rouge": rouge, "eval/harry_potter/general_ppl": ppl})
        write_json(d / "provenance.json", {"overrides": [f"method={method}"]})
    from unlearn.report.__main__ import axes_for
    from unlearn.report.collect import load_runs

    axes = axes_for(load_runs(root), "harry_potter", [])
    assert axes.utility_higher_is_better is False
    # npo (0.3, 40) is dominated by gd (0.2, 20) when lower perplexity is better
    assert pareto_mask(np.array([0.1, 0.2, 0.3]), np.array([50.0, 20.0, 40.0]), False, axes.utility_higher_is_better).tolist() == [True, True, False]
    assert main([str(root)]) == 0
