"""``python -m unlearn.report SWEEP_DIR``: results table (Markdown, CSV) and Pareto plots of a sweep.

Reads only the run directories (``results.json``, ``config.json``, ``provenance.json``), so it works
offline and on sweeps whose W&B runs were never synced. Seeds are averaged per grid cell
(mean ± std); failed and diverged jobs are listed with their reasons.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from unlearn.report.collect import Run, cells, frame, load_runs
from unlearn.report.pareto import Axes, plot


def axes_for(runs: list[Run], bench: str, metrics: list[str]) -> Axes | None:
    """The plot axes from the runs' ``benchmark.report`` config, else a guess from the metric names."""
    for r in runs:
        rep = r.config.get("benchmark", {}).get("report") if r.benchmark == bench else None
        if rep:
            return Axes(forget=f"eval/{bench}/{rep['forget']}", utility=f"eval/{bench}/{rep['utility']}",
                        forget_higher_is_better=bool(rep.get("forget_higher_is_better", False)),
                        forget_log=bool(rep.get("forget_log", False)),
                        utility_higher_is_better=bool(rep.get("utility_higher_is_better", True)))
    forget = [m for m in metrics if "forget" in m]
    utility = [m for m in metrics if "utility" in m or "mmlu" in m]
    return Axes(forget=forget[0], utility=utility[0]) if forget and utility else None


def table_metrics(runs: list[Run], bench: str, available: list[str]) -> list[str]:
    for r in runs:
        rep = r.config.get("benchmark", {}).get("report") if r.benchmark == bench else None
        if rep and rep.get("table"):
            return [f"eval/{bench}/{m}" for m in rep["table"] if f"eval/{bench}/{m}" in available]
    return available


def _pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.3g} ± {std:.2g}" if std and not math.isnan(std) else f"{mean:.3g}"


ALWAYS_SHOWN = ("method", "combiner", "rate")


def markdown(c: pd.DataFrame, metrics: list[str], title: str) -> str:
    """A Markdown table: the factors that vary in this sweep (plus method, combiner, r), the number
    of finished seeds, and mean ± std of each metric."""
    factors = [k for k in c.columns if not k.endswith(("_mean", "_std")) and k not in ("n", "n_failed", "n_diverged")]
    factors = [k for k in factors if k in ALWAYS_SHOWN or c[k].nunique() > 1]
    head = factors + ["n"] + [m.split("/")[-1] for m in metrics]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in c.iterrows():
        vals = [str(row[f]) for f in factors] + [str(int(row["n"])) + (f" (+{int(row['n_failed'] + row['n_diverged'])} failed/diverged)" if row["n_failed"] + row["n_diverged"] else "")]
        vals += [_pm(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def wandb_group(runs: list[Run], root: Path) -> str:
    """The W&B group the sweep's jobs logged to, so the report run lands beside them: the one group
    their provenance.json records (``group=``, else the sweep folder below ``multirun/``, as
    ``unlearn.__main__.sweep_group`` names it); where the runs name none, or several, the group a
    sweep in ``root`` gets."""
    from unlearn.__main__ import sweep_group

    groups = sorted({g for g in (r.group for r in runs) if g})
    if len(groups) == 1:
        return groups[0]
    if groups:
        print(f"report: the runs under {root} belong to {len(groups)} W&B groups {groups}; logging to {sweep_group(str(root.resolve()))!r}", file=sys.stderr)
    return sweep_group(str(root.resolve()))


def report(root: Path, out: Path) -> dict[str, Any]:
    """Write ``runs.csv``, a table per benchmark, its Pareto plot and ``report.md`` to ``out``.

    Returns what it made: ``tables`` and ``plots`` (paths), ``fronts`` (benchmark -> the cells on
    the plotted Pareto front), ``markdown`` (path) and ``group`` (the runs' W&B group)."""
    runs = load_runs(root)
    if not runs:
        raise SystemExit(f"report: no run directories (with results.json) under {root}")
    df = frame(runs)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)
    parts, made = [f"# Sweep report: {root}\n", f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in df["status"].value_counts().items()) + "\n"], {"plots": [], "tables": [], "fronts": {}}
    for bench in sorted(df["benchmark"].unique()):
        sub = df[df["benchmark"] == bench].dropna(axis=1, how="all")
        bench_runs = [r for r in runs if r.benchmark == bench]
        metrics = sorted(c for c in sub.columns if c.startswith(f"eval/{bench}/"))
        c = cells(sub, metrics)
        c.to_csv(out / f"table_{bench}.csv", index=False)
        made["tables"].append(out / f"table_{bench}.csv")
        parts.append(markdown(c, table_metrics(bench_runs, bench, metrics), f"{bench}"))
        ax = axes_for(bench_runs, bench, metrics)
        if ax is not None and f"{ax.forget}_mean" in c and f"{ax.utility}_mean" in c:
            drawn = plot(c, ax, f"{bench}: forgetting vs utility ({root.name})", out / f"pareto_{bench}.png")
            made["plots"].append(drawn.path)
            made["fronts"][bench] = drawn.front
            parts.append(f"![pareto {bench}]({drawn.path.name})\n")
    bad = df[df["status"] != "ok"]
    if len(bad):
        parts.append("## Runs that did not finish\n\n| run | status | reason |\n|---|---|---|\n" + "".join(f"| {r.run} | {r.status} | {r.reason} |\n" for r in bad.itertuples()))
    (out / "report.md").write_text("\n".join(parts))
    made["markdown"] = out / "report.md"
    made["group"] = wandb_group(runs, root)
    return made


def log_to_wandb(made: dict[str, Any], project: str, mode: str) -> None:
    import wandb

    group = made["group"]
    run = wandb.init(project=project, group=group, job_type="report", name=f"report-{group}", mode=mode)
    for t in made["tables"]:
        run.log({t.stem: wandb.Table(dataframe=pd.read_csv(t))})
    for p in made["plots"]:
        run.log({p.stem: wandb.Image(str(p))})
    run.finish()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m unlearn.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", type=Path, help="a sweep folder (multirun/...) or any folder of run directories")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: SWEEP_DIR/report)")
    ap.add_argument("--wandb", action="store_true", help="also log the tables and plots to W&B")
    ap.add_argument("--wandb-project", default="unlearn")
    ap.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"report: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    made = report(args.sweep_dir, args.out or args.sweep_dir / "report")
    if args.wandb:
        log_to_wandb(made, args.wandb_project, args.wandb_mode)
    print(f"wrote {made['markdown']}, {len(made['tables'])} table(s), {len(made['plots'])} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
