"""`python -m unlearn.report` on hand-made lr sweeps: curves along the swept key, utility at matched
forgetting, gradient geometry, option names, and jobs that did not finish or left damaged files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from unlearn.report.__main__ import main, report
from unlearn.report.collect import combiner_option, load_runs
from unlearn.report.pareto import Axes, _label, _log_axis, error_low, plot
from unlearn.rundir import write_json

LRS = ("1e-3", "4e-3", "1.6e-2")
# per combiner, along the lrs: forget_prob falls steadily, forget_quality rises then falls (as on
# the toy world), utility falls; seed 1 has utility +0.02 everywhere
CURVES = {
    "sum": {"forget_prob": (0.4, 0.2, 0.05), "forget_quality": (0.02, 0.27, 0.002), "model_utility": (0.8, 0.6, 0.3)},
    "sago": {"forget_prob": (0.5, 0.3, 0.1), "forget_quality": (0.01, 0.2, 0.05), "model_utility": (0.9, 0.8, 0.5)},
}
ORACLE_PROB = 0.25
CLASS = {"sum": "Sum", "sago": "SAGO"}


def _job(root, name, combiner, lr, seed, values, status="ok", steps=None, alpha=1.0, override_combiner=True):
    d = root / name
    cfg = {
        "seed": seed,
        "method": {"name": "gd"},
        "forget": {"_target_": "unlearn.losses.GA"},
        "retain": {"_target_": "unlearn.losses.NLL"},
        "combiner": {"_target_": f"unlearn.combiners.{CLASS[combiner]}", "alpha": alpha, "gamma": 1.0},
        "smoothing": {"rate": 0.0},
        "model": {"name": "tiny"},
        "optim": {"lr": float(lr)},
        "benchmark": {
            "name": "toy",
            "report": {
                "forget": "forget_quality",
                "forget_higher_is_better": True,
                "forget_log": True,
                "utility": "model_utility",
                "table": ["forget_quality", "forget_prob", "retain_rouge", "model_utility"],
            },
        },
    }
    res = {"status": status, "reason": None if status == "ok" else f"{status} at step 3"}
    if status == "ok":
        res.update({f"eval/toy/{k}": v for k, v in values.items()})
        res["eval/toy/retain_rouge"] = values["model_utility"] / 2
        res["oracle/toy/forget_prob"] = ORACLE_PROB
    write_json(d / "config.json", cfg)
    write_json(d / "results.json", res)
    overrides = [
        "sweep=lr",
        "method=gd",
        *([f"combiner={combiner}"] if override_combiner else []),
        f"optim.lr={lr}",
        f"seed={seed}",
    ]
    write_json(d / "provenance.json", {"overrides": overrides, "group": "lr"})
    if steps is not None:
        (d / "metrics.jsonl").write_text(
            "".join(
                json.dumps({"step": i, "phase": "unlearn", **{f"train/grad/{k}": v for k, v in s.items()}}) + "\n"
                for i, s in enumerate(steps)
            )
        )
    return d


@pytest.fixture
def lr_sweep(tmp_path):
    root = tmp_path / "multirun" / "lr"
    k = 0
    for combiner, curve in CURVES.items():
        for i, lr in enumerate(LRS):
            for seed in (0, 1):
                values = {m: v[i] + (0.02 if m == "model_utility" and seed == 1 else 0.0) for m, v in curve.items()}
                _job(root, f"{k}_job", combiner, lr, seed, values)
                k += 1
    return root


def test_an_lr_sweep_draws_one_curve_per_method_and_combiner_along_lr(lr_sweep, tmp_path):
    made = report(lr_sweep, tmp_path / "out")
    # before: one single-point series per (method, combiner, lr) and the points joined along r only
    curves = made["curves"]["toy"]
    assert curves == {"ga+nll+sago": ["0.001", "0.004", "0.016"], "ga+nll+sum": ["0.001", "0.004", "0.016"]}
    table = pd.read_csv(tmp_path / "out" / "table_toy.csv", dtype={"optim.lr": str})
    assert (
        table["optim.lr"].tolist() == ["0.001", "0.004", "0.016"] * 2
    )  # numeric order, 1e-3 spelled as Python prints it


def test_the_curve_key_can_be_named_and_is_checked(lr_sweep, tmp_path):
    with pytest.raises(SystemExit, match=r"--along 'train.steps' is not a factor of this sweep"):
        report(lr_sweep, tmp_path / "out", along="train.steps")


def test_lower_error_bars_stay_on_a_log_axis():
    x, std = np.array([0.01, 0.5, 2.0]), np.array([0.05, 0.1, np.nan])
    low = error_low(x, std, log=True)
    assert (x - low > 0).all() and low.tolist() == pytest.approx([0.009, 0.1, 0.0])
    assert error_low(x, std, log=False).tolist() == pytest.approx([0.05, 0.1, 0.0])


@pytest.mark.parametrize("low, decades_only", [(0.03, False), (1e-6, True)])
def test_log_axis_ticks_thin_out_over_many_decades(low, decades_only):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([low, 0.9], [0, 1])
    _log_axis(ax, np.array([low, 0.9]))
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.xaxis.get_major_locator()() if lo <= t <= hi]
    plt.close(fig)
    mantissas = {round(t / 10 ** np.floor(np.log10(t) + 1e-9), 6) for t in ticks}
    # over 1.5 decades 1-2-5 ticks; over six, one per decade (1-2-5 there is 18 labels in 8 inches)
    assert (mantissas == {1.0}) if decades_only else ({2.0, 5.0} <= mantissas)


def test_utility_at_matched_forgetting_interpolates_each_seed_on_forget_prob(lr_sweep, tmp_path):
    made = report(lr_sweep, tmp_path / "out")
    t = made["matched"]["toy"].set_index(["level", "combiner"])
    # oracle forget_prob 0.25: sum between lr 1e-3 (0.4) and 4e-3 (0.2), 3/4 of the way: 0.8 - 0.75*0.2
    # = 0.65 (seed 0), 0.67 (seed 1); sago between 4e-3 (0.3) and 1.6e-2 (0.1), 1/4: 0.725, 0.745
    assert t.loc[("oracle", "sum"), "eval/toy/model_utility_mean"] == pytest.approx(0.66)
    assert t.loc[("oracle", "sum"), "eval/toy/model_utility_std"] == pytest.approx(np.std([0.65, 0.67], ddof=1))
    assert t.loc[("oracle", "sago"), "eval/toy/model_utility_mean"] == pytest.approx(0.735)
    assert t.loc[("oracle", "sago"), "eval/toy/retain_rouge_mean"] == pytest.approx(0.735 / 2)
    assert t.loc[("oracle", "sum"), "n"] == 2
    # the lr there, geometrically between the bracketing lrs
    assert t.loc[("oracle", "sum"), "at_mean"] == pytest.approx(1e-3 * 4**0.75)
    # shared range of forget_prob: [max(0.05, 0.1), min(0.4, 0.5)] = [0.1, 0.4]
    levels = made["matched"]["toy"].drop_duplicates("level").set_index("level")["value"]
    assert levels.to_dict() == pytest.approx(
        {"oracle": 0.25, "25% of shared range": 0.175, "50% of shared range": 0.25, "75% of shared range": 0.325}
    )
    md = made["markdown"].read_text()
    assert (
        "## toy: Utility at matched forgetting" in md and "Matched on `forget_prob`, monotone along 2 of 2 curves" in md
    )
    assert "| oracle | 0.25 | ga+nll | sum | 2 | 0.00283 | 0.66 ± 0.014 | 0.33 ± 0.0071 |" in md
    assert (tmp_path / "out" / "matched_toy.png").exists()
    assert made["summary"]["matched/toy/oracle/ga+nll/sago/model_utility"] == pytest.approx(0.735)


def test_curves_told_apart_by_another_factor_keep_their_own_summary_keys(tmp_path):
    """An lr sweep at two retain weights: two curves per method + combiner, each with its own
    matched utility in the W&B summary (one key for both overwrote the first with the second)."""
    root = tmp_path / "multirun" / "lr"
    k = 0
    for alpha, shift in ((1.0, 0.0), (0.5, 0.1)):
        for i, lr in enumerate(LRS):
            for seed in (0, 1):
                values = {m: v[i] + (shift if m == "model_utility" else 0.0) for m, v in CURVES["sum"].items()}
                d = _job(root, f"{k}_job", "sum", lr, seed, values, alpha=alpha)
                prov = json.loads((d / "provenance.json").read_text())
                prov["overrides"].append(f"combiner.alpha={alpha}")
                write_json(d / "provenance.json", prov)
                k += 1
    made = report(root, tmp_path / "out")
    oracle = {k: v for k, v in made["summary"].items() if k.startswith("matched/toy/oracle/")}
    # forget_prob 0.25 lies 3/4 of the way from lr 1e-3 to 4e-3: utility 0.8 - 0.75*0.2 = 0.65 (+0.1)
    assert oracle["matched/toy/oracle/ga+nll/sum/alpha=1.0/model_utility"] == pytest.approx(0.65)
    assert oracle["matched/toy/oracle/ga+nll/sum/alpha=0.5/model_utility"] == pytest.approx(0.75)


def test_a_match_metric_of_unknown_direction_gets_no_front_and_no_arrow(lr_sweep, tmp_path):
    """forget_prob falls as unlearning goes further (lower is better); of a metric named by
    --match the report knows no direction, so it draws no Pareto front and claims none."""
    from unlearn.report.collect import cells, frame

    c = cells(frame(load_runs(lr_sweep)), ["eval/toy/forget_quality", "eval/toy/model_utility"])
    known = plot(
        c, Axes("eval/toy/forget_quality", "eval/toy/model_utility", False), "t", tmp_path / "a.png", "optim.lr"
    )
    unknown = plot(
        c, Axes("eval/toy/forget_quality", "eval/toy/model_utility", None), "t", tmp_path / "b.png", "optim.lr"
    )
    assert len(known.front) > 0 and len(unknown.front) == 0
    assert _label("forget_quality", None) == "forget_quality"
    assert _label("forget_prob", False, log=True) == "forget_prob (log scale)   [← lower is better]"


def test_a_level_a_curve_does_not_reach_is_a_dash_and_the_match_metric_can_be_chosen(lr_sweep, tmp_path):
    made = report(lr_sweep, tmp_path / "out", match="forget_quality")
    t = made["matched"]["toy"]
    assert "oracle" not in set(t["level"])  # the runs record no oracle forget_quality
    md = made["markdown"].read_text()
    assert "Matched on `forget_quality`, monotone along 0 of 2 curves" in md
    with pytest.raises(SystemExit, match=r"--match 'forget_rate' is not a metric of benchmark toy"):
        report(lr_sweep, tmp_path / "out2", match="forget_rate")
    # a level beyond one curve's reach: sum's forget_prob spans [0.05, 0.4], sago's [0.1, 0.5]
    from unlearn.report.collect import frame
    from unlearn.report.curves import matched

    df = frame(load_runs(lr_sweep))
    far = matched(
        df, ["method", "combiner"], "optim.lr", "eval/toy/forget_prob", ["eval/toy/model_utility"], [("x", 0.07)]
    ).set_index("combiner")
    assert (
        far.loc["sago", "n"] == 0
        and np.isnan(far.loc["sago", "eval/toy/model_utility_mean"])
        and far.loc["sum", "n"] == 2
    )


def _geometry_steps(cos_ur, norm_update, norm_forget=3.0, norm_retain=4.0, cos_fr=0.0):
    return [
        {
            "cos_update_retain": c,
            "cos_update_forget": 0.1,
            "cos_forget_retain": cos_fr,
            "conflict_frac": 0.4,
            "norm_update": norm_update,
            "norm_forget": norm_forget,
            "norm_retain": norm_retain,
        }
        for c in cos_ur
    ]


def test_the_gradient_geometry_section_averages_steps_then_seeds(tmp_path, monkeypatch):
    root = tmp_path / "multirun" / "lr"
    values = {"forget_prob": 0.2, "forget_quality": 0.1, "model_utility": 0.5}
    # |g_f| = 3, |g_r| = 4, orthogonal: |g_f + g_r| = 5
    _job(root, "0_job", "sum", "1e-3", 0, values, steps=_geometry_steps([0.5, 0.7], 5.0))
    _job(root, "1_job", "sum", "1e-3", 1, values, steps=_geometry_steps([0.8, 1.0], 5.0))
    d = _job(root, "2_job", "sago", "1e-3", 0, values, steps=_geometry_steps([0.9, 0.9], 2.5))
    with (d / "metrics.jsonl").open("a") as f:
        f.write('{"step": 2, "phase": "unlearn", "train/grad/cos_upd')  # a job killed mid-write
    # alpha = 2, cos(g_f, g_r) = 0.5: |g_f + 2 g_r| = sqrt(9 + 64 + 2*2*3*4*0.5) = sqrt(97)
    _job(
        root, "3_job", "sago", "4e-3", 0, values, steps=_geometry_steps([0.2, 0.4], 97**0.5 / 2, cos_fr=0.5), alpha=2.0
    )
    _job(root, "4_job", "sago", "4e-3", 1, values, status="diverged", steps=_geometry_steps([-1.0], 1.0))
    made = report(root, root / "report")
    g = made["geometry"]["toy"].set_index(["combiner", "optim.lr"])
    assert g.loc[("sum", "0.001"), "cos_update_retain_mean"] == pytest.approx(0.75)
    assert g.loc[("sum", "0.001"), "cos_update_retain_std"] == pytest.approx(np.std([0.6, 0.9], ddof=1))
    assert g.loc[("sum", "0.001"), "norm_ratio_mean"] == pytest.approx(1.0)
    assert g.loc[("sago", "0.001"), "norm_ratio_mean"] == pytest.approx(0.5) and g.loc[("sago", "0.001"), "n"] == 1
    assert g.loc[("sago", "0.004"), "norm_ratio_mean"] == pytest.approx(0.5)  # the diverged run is not averaged in
    assert g.loc[("sago", "0.004"), "cos_update_retain_mean"] == pytest.approx(0.3)
    md = made["markdown"].read_text()
    assert "## toy: Gradient geometry" in md
    assert "| ga+nll | sum | 0.001 | 2 | 0.75 ± 0.21 | 0.1 | 0 | 0.4 | 1 |" in md
    assert "geometry_toy.png" in md and (root / "report" / "geometry_toy.png").exists()
    assert made["summary"]["geometry/toy/ga+nll/sum/lr=0.001/cos_update_retain"] == pytest.approx(0.75)
    assert made["summary"]["geometry/toy/ga+nll/sago/cos_update_retain"] == pytest.approx(
        0.6
    )  # over the sweep: (0.9 + 0.3) / 2

    import wandb

    class FakeRun:
        summary: dict = {}

        def log(self, data):
            pass

        def finish(self):
            pass

    run = FakeRun()
    monkeypatch.setattr(wandb, "init", lambda **kw: run)
    assert main([str(root), "--wandb"]) == 0
    assert run.summary["geometry/toy/ga+nll/sago/lr=0.004/norm_ratio"] == pytest.approx(0.5)
    assert run.summary["geometry/toy/ga+nll/sum/lr=0.001/conflict_frac"] == pytest.approx(0.4)


def test_series_use_the_command_line_option_names(tmp_path):
    root = tmp_path / "multirun" / "names"
    values = {"forget_prob": 0.2, "forget_quality": 0.1, "model_utility": 0.5}
    _job(root, "0_job", "sago", "1e-3", 0, values)  # combiner=sago on the command line
    d = _job(
        root, "1_job", "sago", "1e-3", 1, values, override_combiner=False
    )  # from the method preset: Hydra's record
    (d / ".hydra").mkdir()
    (d / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  runtime:\n    choices:\n      combiner: sago_prefer_retain\n      method: gd\n"
    )
    _job(root, "2_job", "sum", "1e-3", 0, values, override_combiner=False)  # nothing recorded: matched to conf/combiner
    names = sorted(r.factors()["combiner"] for r in load_runs(root))
    assert names == ["sago", "sago_prefer_retain", "sum"]
    assert (
        combiner_option(
            {"_target_": "unlearn.combiners.SAGO", "alpha": 1.0, "gamma": 1.0, "prefer_retain": True, "gate": "hard"}
        )
        == "sago_prefer_retain"
    )
    assert combiner_option({"_target_": "unlearn.combiners.PCGradGlobal", "alpha": 1.0}) == "pcgrad_global"
    assert combiner_option({"_target_": "unlearn.combiners.PCGrad", "alpha": 0.5}) == "pcgrad"
    assert combiner_option({"_target_": "my.own.Combiner"}) == "combiner"
    md = report(root, root / "report")["markdown"].read_text()
    assert (
        "| ga+nll | sago_prefer_retain |" in md
        and "SAGO" not in md.split("## toy: Gradient geometry")[0].split("| method |")[1]
    )


def test_a_truncated_results_json_is_a_damaged_job_and_the_rest_is_reported(lr_sweep, capsys):
    bad = lr_sweep / "0_job" / "results.json"
    bad.write_text(bad.read_text()[:40])
    assert main([str(lr_sweep)]) == 0
    md = (lr_sweep / "report" / "report.md").read_text()
    assert f"| {lr_sweep / '0_job'} | damaged | {bad} is unreadable (JSONDecodeError" in md
    assert "| ga+nll | sum | 0.0 | 0.001 | 1 (+1 damaged) |" in md
    assert "12 runs: 11 ok, 1 damaged" in md


@pytest.mark.parametrize("status", ["collapsed", "interrupted"])
def test_new_unfinished_statuses_are_listed_like_failed_ones(lr_sweep, status):
    values = {"forget_prob": 0.2, "forget_quality": 0.1, "model_utility": 0.5}
    _job(lr_sweep, "extra_job", "sum", "1e-3", 2, values, status=status)
    made = report(lr_sweep, lr_sweep / "report")
    table = pd.read_csv(made["tables"][0], dtype={"optim.lr": str}).set_index(["combiner", "optim.lr"])
    assert table.loc[("sum", "0.001"), "n"] == 2 and table.loc[("sum", "0.001"), "n_unfinished"] == 1
    md = made["markdown"].read_text()
    assert f"| ga+nll | sum | 0.0 | 0.001 | 2 (+1 {status}) |" in md
    assert f"| {lr_sweep / 'extra_job'} | {status} | {status} at step 3 |" in md
