"""``python -m unlearn.report SWEEP_DIR``: results table, Pareto plot, utility at matched forgetting
and gradient geometry of a sweep (Markdown, CSV, PNG).

Reads only the run directories (``results.json``, ``config.json``, ``provenance.json``,
``metrics.jsonl``), so it works offline and on sweeps whose W&B runs were never synced. Seeds are
averaged per grid cell (mean ± std); jobs that did not finish (failed, diverged, collapsed,
interrupted, damaged files) are listed with their reasons.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from unlearn.report.collect import Run, cells, frame, load_runs
from unlearn.report.curves import along_key, series_keys, series_path
from unlearn.report.pareto import Axes, plot
from unlearn.report.sections import geometry_section, markdown, match_metric, matched_section, utility_metrics


def axes_for(runs: list[Run], bench: str, metrics: list[str]) -> Axes | None:
    """The plot axes from the runs' ``benchmark.report`` config, else a guess from the metric names."""
    for r in runs:
        rep = r.config.get("benchmark", {}).get("report") if r.benchmark == bench else None
        if rep:
            return Axes(
                forget=f"eval/{bench}/{rep['forget']}",
                utility=f"eval/{bench}/{rep['utility']}",
                forget_higher_is_better=bool(rep.get("forget_higher_is_better", False)),
                forget_log=bool(rep.get("forget_log", False)),
                utility_higher_is_better=bool(rep.get("utility_higher_is_better", True)),
            )
    forget = [m for m in metrics if "forget" in m]
    utility = [m for m in metrics if "utility" in m or "mmlu" in m]
    return Axes(forget=forget[0], utility=utility[0]) if forget and utility else None


def table_metrics(runs: list[Run], bench: str, available: list[str]) -> list[str]:
    for r in runs:
        rep = r.config.get("benchmark", {}).get("report") if r.benchmark == bench else None
        if rep and rep.get("table"):
            return [f"eval/{bench}/{m}" for m in rep["table"] if f"eval/{bench}/{m}" in available]
    return available


def wandb_group(runs: list[Run], root: Path) -> str:
    """The W&B group the sweep's jobs logged to, so the report run lands beside them: the one group
    their provenance.json records (``group=``, else the sweep folder below ``multirun/``, as
    ``unlearn.hydra_setup.sweep_group`` names it); where the runs name none, or several, the group a
    sweep in ``root`` gets."""
    from unlearn.hydra_setup import sweep_group

    groups = sorted({g for g in (r.group for r in runs) if g})
    if len(groups) == 1:
        return groups[0]
    if groups:
        print(
            f"report: the runs under {root} belong to {len(groups)} W&B groups {groups}; logging to "
            f"{sweep_group(str(root.resolve()))!r}",
            file=sys.stderr,
        )
    return sweep_group(str(root.resolve()))


def report(root: Path, out: Path, along: str | None = None, match: str | None = None) -> dict[str, Any]:
    """Write ``runs.csv``, and per benchmark its table, Pareto plot, utility at matched forgetting
    and gradient geometry, and ``report.md`` to ``out``. ``along``/``match``: see :func:`along_key`
    and :func:`match_metric` (None: chosen from the sweep).

    Returns what it made: ``tables`` and ``plots`` (paths), ``fronts`` (benchmark -> the cells on
    the plotted Pareto front), ``curves`` (benchmark -> the plotted curves), ``matched`` and
    ``geometry`` (benchmark -> table), ``summary`` (W&B summary values), ``markdown`` (path) and
    ``group`` (the runs' W&B group)."""
    runs = load_runs(root)
    if not runs:
        raise SystemExit(f"report: no run directories (with results.json) under {root}")
    df = frame(runs)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)
    counts = ", ".join(f"{n} {s}" for s, n in df["status"].fillna("unknown").value_counts().items())
    parts = [f"# Sweep report: {root}\n", f"{len(runs)} runs: {counts}\n"]
    made: dict[str, Any] = {
        "plots": [],
        "tables": [],
        "fronts": {},
        "curves": {},
        "matched": {},
        "geometry": {},
        "summary": {},
    }
    for bench in sorted(df["benchmark"].unique()):
        sub = df[df["benchmark"] == bench].dropna(axis=1, how="all")
        if bench == "?" and not (sub["status"] == "ok").any():
            continue  # damaged jobs whose config is unreadable too: listed below, no table of their own
        parts += bench_sections(root, out, bench, sub, [r for r in runs if r.benchmark == bench], made, along, match)
    bad = df[df["status"] != "ok"]
    if len(bad):
        parts.append(
            "## Runs that did not finish\n\n| run | status | reason |\n|---|---|---|\n"
            + "".join(
                f"| {r.run} | {r.status} | {'—' if pd.isna(r.reason) else r.reason} |\n" for r in bad.itertuples()
            )
        )
    (out / "report.md").write_text("\n".join(parts))
    made["markdown"] = out / "report.md"
    made["group"] = wandb_group(runs, root)
    return made


def bench_sections(
    root: Path,
    out: Path,
    bench: str,
    sub: pd.DataFrame,
    bench_runs: list[Run],
    made: dict[str, Any],
    along: str | None,
    match: str | None,
) -> list[str]:
    """One benchmark's parts of report.md (its table, plot, matched-forgetting and geometry
    sections), recording the files and values it made in ``made``."""
    metrics = sorted(c for c in sub.columns if c.startswith(f"eval/{bench}/"))
    c = cells(sub, metrics)
    c.to_csv(out / f"table_{bench}.csv", index=False)
    made["tables"].append(out / f"table_{bench}.csv")
    table = table_metrics(bench_runs, bench, metrics)
    parts = [markdown(c, table, f"{bench}")]
    key = along_key(c, along)
    keys = series_keys(c, key)
    ax = axes_for(bench_runs, bench, metrics)
    if ax is not None and f"{ax.forget}_mean" in c and f"{ax.utility}_mean" in c:
        drawn = plot(c, ax, f"{bench}: forgetting vs utility ({root.name})", out / f"pareto_{bench}.png", along=key)
        made["plots"].append(drawn.path)
        made["fronts"][bench] = drawn.front
        made["curves"][bench] = drawn.curves
        parts.append(f"![pareto {bench}]({drawn.path.name})\n")
    m = match_metric(ax, bench, metrics, match)
    ok = sub[sub["status"] == "ok"]
    if ax is not None and m is not None and len(ok):
        text, t = matched_section(ok, c[c["n"] > 0], keys, key, m, utility_metrics(ax, table, m), bench)
        if len(t) and m != ax.forget:
            # the same curves on the axis they are matched on, with the levels: what the table reads off
            levels = list(t.drop_duplicates("level")[["level", "value"]].itertuples(index=False, name=None))
            on_match = Axes(
                forget=m,
                utility=ax.utility,
                forget_higher_is_better=False if m.endswith("/forget_prob") else None,  # else --match's: unknown
                forget_log=True,
                utility_higher_is_better=ax.utility_higher_is_better,
            )
            drawn = plot(
                c,
                on_match,
                f"{bench}: {m.split('/')[-1]} vs utility ({root.name})",
                out / f"matched_{bench}.png",
                along=key,
                levels=levels,
            )
            made["plots"].append(drawn.path)
            text += f"\n![matched {bench}]({drawn.path.name})\n"
        made["matched"][bench] = t
        if len(t):
            t.to_csv(out / f"matched_{bench}.csv", index=False)
            made["tables"].append(out / f"matched_{bench}.csv")
        for _, r in t.iterrows():
            made["summary"].update(
                {
                    f"matched/{bench}/{r['level']}/{series_path(r, keys)}/{u.split('/')[-1]}": r[f"{u}_mean"]
                    for u in utility_metrics(ax, table, m)
                    if not pd.isna(r[f"{u}_mean"])
                }
            )
        parts.append(text)
    text, g, png, summary = geometry_section(
        bench_runs, c, keys, key, bench, out, f"{bench}: cos(update, g_r) per step ({root.name})"
    )
    parts.append(text)
    if g is not None:
        g.to_csv(out / f"geometry_{bench}.csv", index=False)
        made["tables"].append(out / f"geometry_{bench}.csv")
        made["geometry"][bench] = g
        made["plots"].append(png)
        made["summary"].update(summary)
    return parts


def log_to_wandb(made: dict[str, Any], project: str, mode: Literal["offline", "online"]) -> None:
    import wandb

    group = made["group"]
    run = wandb.init(project=project, group=group, job_type="report", name=f"report-{group}", mode=mode)
    for t in made["tables"]:
        run.log({t.stem: wandb.Table(dataframe=pd.read_csv(t))})
    for p in made["plots"]:
        run.log({p.stem: wandb.Image(str(p))})
    run.summary.update(made["summary"])
    run.finish()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m unlearn.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", type=Path, help="a sweep folder (multirun/...) or any folder of run directories")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: SWEEP_DIR/report)")
    ap.add_argument(
        "--along",
        default=None,
        help="the swept key the curves run along (default: the numeric factor with the most values, e.g. optim.lr)",
    )
    ap.add_argument(
        "--match",
        default=None,
        help="the forget metric curves are matched on (default: forget_prob, else the benchmark's forget metric)",
    )
    ap.add_argument(
        "--wandb",
        action="store_true",
        help="also log the tables, plots and geometry/matched values (as run summary) to W&B",
    )
    ap.add_argument("--wandb-project", default="unlearn")
    ap.add_argument("--wandb-mode", default="offline", choices=["offline", "online"])
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"report: {args.sweep_dir} is not a folder", file=sys.stderr)
        return 2
    made = report(args.sweep_dir, args.out or args.sweep_dir / "report", along=args.along, match=args.match)
    if args.wandb:
        log_to_wandb(made, args.wandb_project, args.wandb_mode)
    print(f"wrote {made['markdown']}, {len(made['tables'])} table(s), {len(made['plots'])} plot(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
