"""`python -m unlearn.report` on hand-made run directories with known values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from unlearn.report.__main__ import main, report, wandb_group
from unlearn.report.collect import Run, cells, frame, load_runs, rate_key
from unlearn.report.pareto import pareto_mask
from unlearn.rundir import read_json, write_json

UNRESOLVED_RATE = "${oc.select:method.tuned.smoothing.sga.rate,0.0}"


#: the losses each method preset here picks (config.json records them, as a real run's does)
LOSSES = {
    "sga": ("GA", "no_loss"),
    "sago": ("SimNPO", "NLL"),
    "ga": ("GA", "no_loss"),
    "gd": ("GA", "NLL"),
    "npo": ("NPO", "NLL"),
}


def _losses(method):
    forget, retain = LOSSES[method]
    return {"forget": {"_target_": f"unlearn.losses.{forget}"}, "retain": {"_target_": f"unlearn.losses.{retain}"}}


def _run(root, name, method, combiner, rate, seed, fq, mu, status="ok", reason=None, group=None):
    d = root / name
    cfg = {
        "seed": seed,
        "method": {"name": method},
        **_losses(method),
        "combiner": {"_target_": f"unlearn.combiners.{combiner}"},
        "smoothing": {"rate": rate},
        "model": {"name": "tiny"},
        "benchmark": {
            "name": "toy",
            "report": {
                "forget": "forget_quality",
                "forget_higher_is_better": True,
                "forget_log": True,
                "utility": "model_utility",
                "table": ["forget_quality", "model_utility"],
            },
        },
    }
    res = {"status": status, "reason": reason}
    if status == "ok":
        res.update({"eval/toy/forget_quality": fq, "eval/toy/model_utility": mu, "eval/toy/forget_rouge": 0.5})
    write_json(d / "config.json", cfg)
    write_json(d / "results.json", res)
    write_json(
        d / "provenance.json",
        {"overrides": [f"method={method}", f"smoothing.rate={rate}", f"seed={seed}"], "group": group},
    )


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
    sga = table[(table["method"] == "ga+none") & (table["rate"] == -0.5)].iloc[0]
    assert sga["n"] == 3
    assert sga["eval/toy/forget_quality_mean"] == pytest.approx(0.2)
    assert sga["eval/toy/forget_quality_std"] == pytest.approx(np.std([0.1, 0.2, 0.3], ddof=1))
    sago = table[(table["method"] == "simnpo+nll") & (table["rate"] == 0.5)].iloc[0]
    assert sago["n"] == 3 and sago["n_diverged"] == 1
    md = (out / "report.md").read_text()
    assert "| method | combiner | rate | n | forget_quality | model_utility |" in md
    assert "0.2 ± 0.1" in md
    assert "optim.lr must be > 0" in md and "diverged" in md
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 14
    from matplotlib.image import imread

    img = imread(out / "pareto_toy.png")
    assert img.shape[0] >= 600 and img.shape[1] >= 800
    # not a blank canvas: dark ink (text, markers) on a light background
    assert (img[..., :3].mean(axis=-1) < 0.3).mean() > 0.002 and img[..., :3].std() > 0.05


def test_a_mean_over_fewer_runs_than_the_cell_says_so(sweep):
    """A metric one finished seed lacks (privleak without an oracle record, say) is averaged over the
    others, and the table says over how many, not the cell's n."""
    res = json.loads((sweep / "0_job" / "results.json").read_text())
    del res["eval/toy/model_utility"]
    write_json(sweep / "0_job" / "results.json", res)
    assert main([str(sweep)]) == 0
    table = pd.read_csv(sweep / "report" / "table_toy.csv")
    cell = table[(table["method"] == "ga+none") & (table["rate"] == -0.5)].iloc[0]
    assert cell["n"] == 3 and cell["eval/toy/model_utility_n"] == 2 and cell["eval/toy/forget_quality_n"] == 3
    md = (sweep / "report" / "report.md").read_text()
    assert "| ga+none | sum | -0.5 | 3 | 0.2 ± 0.1 | 0.395 (n=2) |" in md
    assert "| ga+none | sum | 0.5 | 3 (+1 failed) | 0.2 ± 0.1 | 0.405 |" in md


def test_a_job_in_two_folders_counts_once(sweep, capsys):
    """Growing a sweep renumbers its folders, so a finished job can run again under a new number:
    the same config hash in two folders is one sample of its cell, not two."""
    import shutil

    for d in sorted(sweep.iterdir()):
        if (d / "results.json").exists():
            res = json.loads((d / "results.json").read_text())
            res["config_hash"] = d.name  # one hash per job
            write_json(d / "results.json", res)
    again = sweep / "99_job"
    shutil.copytree(sweep / "0_job", again)  # job 0 (sga, rate -0.5, seed 0) ran again as job 99
    res = json.loads((again / "results.json").read_text())
    res["eval/toy/forget_quality"] = 0.7  # (a changed value shows which one is counted)
    write_json(again / "results.json", res)
    assert main([str(sweep)]) == 0
    assert "leaving out 0_job" in capsys.readouterr().err
    table = pd.read_csv(sweep / "report" / "table_toy.csv")
    cell = table[(table["method"] == "ga+none") & (table["rate"] == -0.5)].iloc[0]
    assert cell["n"] == 3  # not 4
    assert cell["eval/toy/forget_quality_mean"] == pytest.approx((0.7 + 0.2 + 0.3) / 3)


def _front(made, bench):
    return [
        tuple(row) for row in made["fronts"][bench][["method", "combiner", "rate"]].astype(str).itertuples(index=False)
    ]


def test_a_rate_auto_job_is_its_own_cell_sorted_last_and_on_the_front(sweep, tmp_path):
    for seed in (0, 1):
        _run(sweep, f"auto_{seed}_job", "sga", "Sum", "auto", seed, 0.9, 0.3)
    made = report(sweep, tmp_path / "out")
    table = pd.read_csv(made["tables"][0], dtype={"rate": str})
    assert table[["method", "rate"]].values.tolist() == [
        ["ga+none", "-0.5"],
        ["ga+none", "0.5"],
        ["ga+none", "auto"],
        ["simnpo+nll", "-0.5"],
        ["simnpo+nll", "0.5"],
    ]
    auto = table[table["rate"] == "auto"].iloc[0]
    assert auto["n"] == 2 and auto["eval/toy/forget_quality_mean"] == pytest.approx(0.9)
    assert "| ga+none | sum | auto | 2 |" in made["markdown"].read_text()
    # sago r=0.5 (0.5, 0.505) dominates every other cell but sga r=auto (0.9, 0.3): best forget quality
    assert _front(made, "toy") == [("simnpo+nll", "sago", "0.5"), ("ga+none", "sum", "auto")]
    assert made["fronts"]["toy"]["eval/toy/forget_quality_mean"].tolist() == pytest.approx([0.5, 0.9])


def test_rates_sort_as_numbers_with_auto_last():
    assert sorted(["auto", "0.5", "-1", "?", "-0.5", "10", "0"], key=rate_key) == [
        "-1",
        "-0.5",
        "0",
        "0.5",
        "10",
        "auto",
        "?",
    ]


def test_an_unresolved_rate_interpolation_joins_its_real_cell(sweep):
    # failed validation before config.json was resolved: no provenance.json, only Hydra's overrides
    _run(sweep, "early_fail_job", "sga", "Sum", 0.5, 4, 0, 0, status="failed", reason="config error")
    d = sweep / "early_fail_job"
    cfg = read_json(d / "config.json")
    cfg["smoothing"]["rate"] = UNRESOLVED_RATE
    write_json(d / "config.json", cfg)
    (d / "provenance.json").unlink()
    (d / ".hydra").mkdir()
    (d / ".hydra" / "overrides.yaml").write_text("- method=sga\n- smoothing.rate=0.5\n- seed=4\n")
    # an old run dir: the rate came from the method preset, which config.json still holds
    _run(sweep, "old_job", "sago", "SAGO", -0.5, 4, 0, 0, status="failed", reason="killed")
    d = sweep / "old_job"
    cfg = read_json(d / "config.json")
    cfg["smoothing"]["rate"] = UNRESOLVED_RATE
    cfg["method"]["tuned"] = {"smoothing": {"sga": {"rate": -0.5}}}
    write_json(d / "config.json", cfg)
    write_json(d / "provenance.json", {"overrides": ["method=sago", "seed=4"], "group": None})

    assert main([str(sweep)]) == 0
    table = pd.read_csv(sweep / "report" / "table_toy.csv", dtype={"rate": str})
    assert sorted(table["rate"]) == ["-0.5", "-0.5", "0.5", "0.5"]
    by = table.set_index(["method", "rate"])
    assert by.loc[("ga+none", "0.5"), "n_failed"] == 2 and by.loc[("simnpo+nll", "-0.5"), "n_failed"] == 1


def test_a_rate_that_cannot_be_resolved_is_unknown_not_a_cell_named_after_the_interpolation(tmp_path):
    cfg = {
        "smoothing": {"rate": "${oc.env:UNLEARN_TEST_UNSET_VARIABLE}"},
        "method": {"name": "${oc.select:nothing.here}"},
    }
    run = Run(tmp_path, cfg, {}, [])
    assert run.rate() == "?" and run.factors()["method"] == "?"
    assert Run(tmp_path, {"smoothing": {"rate": UNRESOLVED_RATE}}, {}, []).rate() == "0.0"
    assert Run(tmp_path, {"smoothing": {"rate": UNRESOLVED_RATE}}, {}, ["smoothing.rate=0.50"]).rate() == "0.5"


@pytest.mark.parametrize(
    "group, expected", [("exp_rate", "exp_rate"), ("paper-table2", "paper-table2"), (None, "exp_rate")]
)
def test_the_report_logs_to_the_group_its_runs_logged_to(tmp_path, monkeypatch, group, expected):
    # a nested sweep name (sweep=exp/rate) or group=...: the folder's own name ("rate") is neither
    root = tmp_path / "multirun" / "exp" / "rate"
    for seed in (0, 1):
        _run(root, f"{seed}_job", "sga", "Sum", 0.5, seed, 0.2, 0.4, group=group)
    assert wandb_group(load_runs(root), root) == expected
    import wandb

    calls = []

    class FakeRun:
        summary: dict = {}

        def log(self, data):
            calls.append(("log", sorted(data)))

        def finish(self):
            calls.append(("finish",))

    monkeypatch.setattr(wandb, "init", lambda **kw: calls.append(("init", kw)) or FakeRun())
    assert main([str(root), "--wandb"]) == 0
    assert calls[0][1]["group"] == expected and calls[0][1]["job_type"] == "report"
    assert ("log", ["pareto_toy"]) in calls and calls[-1] == ("finish",)


def test_runs_of_several_groups_fall_back_to_the_sweep_folder(tmp_path, capsys):
    root = tmp_path / "multirun" / "exp"
    _run(root / "a", "0_job", "sga", "Sum", 0.5, 0, 0.2, 0.4, group="exp_a")
    _run(root / "b", "0_job", "sga", "Sum", 0.5, 0, 0.2, 0.4, group="exp_b")
    assert wandb_group(load_runs(root), root) == "exp"
    assert "2 W&B groups" in capsys.readouterr().err


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
    from conftest import compose
    from hydra.utils import get_class

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
        write_json(
            d / "config.json",
            {
                "seed": 0,
                "method": {"name": method},
                **_losses(method),
                "combiner": {"_target_": "unlearn.combiners.Sum"},
                "smoothing": {"rate": 0},
                "model": {"name": "tiny"},
                "benchmark": {
                    "name": "harry_potter",
                    "report": {
                        "forget": "completion_rouge",
                        "utility": "general_ppl",
                        "utility_higher_is_better": False,
                    },
                },
            },
        )
        write_json(
            d / "results.json",
            {"status": "ok", "eval/harry_potter/completion_rouge": rouge, "eval/harry_potter/general_ppl": ppl},
        )
        write_json(d / "provenance.json", {"overrides": [f"method={method}"]})
    from unlearn.report.__main__ import axes_for

    axes = axes_for(load_runs(root), "harry_potter", [])
    assert axes.utility_higher_is_better is False
    made = report(root, root / "report")
    # npo (0.3, 40) is dominated by gd (0.2, 20) when lower perplexity is better; were perplexity
    # taken as higher-is-better, ga (0.1, 50) alone would be the front
    assert _front(made, "harry_potter") == [("ga+none", "sum", "0"), ("ga+nll", "sum", "0")]
    assert made["fronts"]["harry_potter"]["eval/harry_potter/general_ppl_mean"].tolist() == [50.0, 20.0]


def test_two_presets_that_ran_the_same_options_stay_apart_as_preset(tmp_path):
    """`method=npo forget=simnpo` and `method=simnpo` run the same options with other learning rates
    and betas: one label, so the preset (method.name) becomes a factor rather than a merged cell."""

    def run(preset, seed):
        cfg = {
            "seed": seed,
            "method": {"name": preset},
            **_losses("sago"),
            "combiner": {"_target_": "unlearn.combiners.Sum"},
            "benchmark": {"name": "toy"},
            "model": {"name": "tiny"},
        }
        return Run(tmp_path / f"{preset}{seed}", cfg, {"status": "ok"}, [f"method={preset}"])

    df = frame([run("simnpo", 0), run("npo", 0), run("npo", 1)])
    assert set(df["method"]) == {"simnpo+nll"} and df["preset"].tolist() == ["simnpo", "npo", "npo"]
    assert len(cells(df, [])) == 2
    alone = frame([run("simnpo", 0), run("simnpo", 1)])
    assert "preset" not in alone and alone["method"].tolist() == ["simnpo+nll", "simnpo+nll"]
