"""The Markdown sections of a sweep report: the results table, utility at matched forgetting and
gradient geometry (each returns its text and the table behind it)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from unlearn.report import geometry
from unlearn.report.collect import Run, factor_names, rate_key
from unlearn.report.curves import along_label, is_monotone, matched, ordered, series_path, shared_levels
from unlearn.report.pareto import Axes, colours


def _pm(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    return f"{mean:.3g} ± {std:.2g}" if std and not math.isnan(std) else f"{mean:.3g}"


def _fewer(row: pd.Series, m: str) -> str:
    """`` (n=k)`` where the mean of ``m`` is over fewer runs than the cell's ``n``."""
    k = row.get(f"{m}_n")
    return f" (n={int(k)})" if k is not None and 0 < k < row["n"] else ""


ALWAYS_SHOWN = ("method", "combiner", "rate")


def _shown(c: pd.DataFrame) -> list[str]:
    """The factors a table shows: those that vary in this sweep, plus method, combiner and r."""
    return [k for k in factor_names(c) if k in ALWAYS_SHOWN or c[k].nunique() > 1]


def _row(vals: list[str]) -> str:
    return "| " + " | ".join(vals) + " |"


def markdown(c: pd.DataFrame, metrics: list[str], title: str) -> str:
    """A Markdown table: the factors that vary in this sweep (plus method, combiner, r), the number
    of finished seeds (and of the runs that did not finish, by status), and mean ± std of each metric
    (with its own count where fewer finished runs report it)."""
    factors = _shown(c)
    head = factors + ["n"] + [m.split("/")[-1] for m in metrics]
    lines = [f"## {title}", "", _row(head), "|" + "---|" * len(head)]
    for _, row in c.iterrows():
        vals = [str(row[f]) for f in factors] + [
            str(int(row["n"])) + (f" (+{row['unfinished']})" if row["n_unfinished"] else "")
        ]
        vals += [_pm(row[f"{m}_mean"], row[f"{m}_std"]) + _fewer(row, m) for m in metrics]
        lines.append(_row(vals))
    return "\n".join(lines) + "\n"


def match_metric(axes: Axes | None, bench: str, metrics: list[str], explicit: str | None) -> str | None:
    """What curves are matched on: ``--match`` (a metric name or key), else ``forget_prob`` (the
    probability of the forget answers falls steadily as unlearning goes further, while forget quality
    rises and then falls along an lr sweep), else the benchmark's named forget metric."""
    if explicit:
        key = explicit if "/" in explicit else f"eval/{bench}/{explicit}"
        if key not in metrics:
            raise SystemExit(
                f"report: --match {explicit!r} is not a metric of benchmark {bench}; it has "
                f"{[m.split('/')[-1] for m in metrics]}"
            )
        return key
    if f"eval/{bench}/forget_prob" in metrics:
        return f"eval/{bench}/forget_prob"
    return axes.forget if axes is not None else None


UTILITY_WORDS = ("utility", "retain", "mmlu", "general", "ppl", "fluency")


def utility_metrics(axes: Axes, table: list[str], match: str) -> list[str]:
    """The plotted utility metric, then the table's other utility-side metrics (retain, general, MMLU, ...)."""
    rest = [m for m in table if any(w in m.split("/")[-1] for w in UTILITY_WORDS) and m not in (axes.utility, match)]
    return [axes.utility, *rest]


def matched_section(
    ok: pd.DataFrame, c: pd.DataFrame, keys: list[str], along: str | None, match: str, utilities: list[str], bench: str
) -> tuple[str, pd.DataFrame]:
    """The "Utility at matched forgetting" section of one benchmark and its table."""
    name = match.split("/")[-1]
    oracle = ok.get(f"oracle/{bench}/{name}", pd.Series(dtype=float)).dropna()
    curves = [ordered(g, along)[f"{match}_mean"].to_numpy(float) for _, g in c.groupby(keys)]
    levels = [("oracle", float(oracle.mean()))] if len(oracle) else []
    # shared_levels gives one level per quartile, or none when the curves share no range
    levels += [(f"{q}% of shared range", v) for q, v in zip((25, 50, 75), shared_levels(curves), strict=False)]
    t = matched(ok, keys, along, match, utilities, levels)
    monotone = sum(is_monotone(x[~pd.isna(x)]) for x in curves)
    sweep = f"{along_label(along)} ({along})" if along else "the sweep"
    head = [
        "level",
        name,
        *keys,
        "n",
        f"{along_label(along)} there" if along else "",
        *(u.split("/")[-1] for u in utilities),
    ]
    lines = [
        f"## {bench}: Utility at matched forgetting",
        "",
        f"Each curve (one per {' + '.join(keys)}, along {sweep}) is interpolated linearly in `{name}` between the two "
        "sweep points that bracket each level, seed by seed; mean ± std over seeds, n = seeds whose curve reaches the "
        f"level (— where none does). Matched on `{name}`, monotone along {monotone} of {len(curves)} curves (a "
        f"non-monotone curve is read at its first crossing). Levels: the oracle's `{name}` (retrained without the "
        "forget set) where the runs record it, and 25/50/75% of the range every curve spans.",
        "",
        _row(head),
        "|" + "---|" * len(head),
    ]
    if t.empty:
        lines.append(
            _row(["no level: the runs record no oracle value and the curves share no range"] + [""] * (len(head) - 1))
        )
    for _, r in t.iterrows():
        lines.append(
            _row(
                [
                    r["level"],
                    f"{r['value']:.3g}",
                    *(str(r[k]) for k in keys),
                    str(int(r["n"])),
                    "—" if pd.isna(r["at_mean"]) else f"{r['at_mean']:.3g}",
                    *(_pm(r[f"{u}_mean"], r[f"{u}_std"]) for u in utilities),
                ]
            )
        )
    return "\n".join(lines) + "\n", t


def _geometry_rows(table: pd.DataFrame, keys: list[str]) -> list[str]:
    cols = list(geometry.COLUMNS)
    lines = [_row([*keys, "n", *geometry.COLUMNS.values()]), "|" + "---|" * (len(keys) + 1 + len(cols))]
    return lines + [
        _row([str(r[k]) for k in keys] + [str(int(r["n"]))] + [_pm(r[f"{c}_mean"], r[f"{c}_std"]) for c in cols])
        for _, r in table.iterrows()
    ]


def _geometry_summary(table: pd.DataFrame, keys: list[str], along: str | None, bench: str) -> dict[str, float]:
    """W&B summary keys ``geometry/<bench>/<method>/<combiner>[/<factor>=<v>...][/lr=<v>]/<column>``
    of a geometry table."""
    out = {}
    for _, r in table.iterrows():
        path = "/".join([series_path(r, keys)] + ([f"{along_label(along)}={r[along]}"] if along in table else []))
        out.update({f"geometry/{bench}/{path}/{c}": float(r[f"{c}_mean"]) for c in geometry.COLUMNS})
    return out


def geometry_section(
    bench_runs: list[Run], c: pd.DataFrame, keys: list[str], along: str | None, bench: str, out: Path, title: str
) -> tuple[str, pd.DataFrame | None, Path | None, dict[str, float]]:
    """The "Gradient geometry" section: per cell, and per method + combiner over the whole sweep, the
    mean over steps (± std over seeds) of each :data:`geometry.COLUMNS`; the cos(update, g_r) step
    plot; the values as W&B summary keys (:func:`_geometry_summary`)."""
    cell_keys = [*keys, along] if along else keys
    means, steps = geometry.per_run(bench_runs, cell_keys)
    if means.empty:
        return (
            f"## {bench}: Gradient geometry\n\nNo run logged per-step gradient diagnostics (`train.diagnostics`).\n",
            None,
            None,
            {},
        )
    per_cell = geometry.cells(means, cell_keys)
    per_cell = per_cell.iloc[
        sorted(range(len(per_cell)), key=lambda i: tuple(rate_key(per_cell[k].iloc[i]) for k in cell_keys))
    ]
    lines = [
        f"## {bench}: Gradient geometry",
        "",
        "Per-step diagnostics from each run's `metrics.jsonl` (`train/grad/...`): the mean over steps per run, then "
        "mean ± std over seeds. The update is the combiner's output before clipping; ‖γ g_f + α g_r‖ is the plain "
        "sum's norm, computed from the logged norms and cos(g_f, g_r). Conflict fraction: coordinates where g_f and "
        "g_r have opposite signs.",
        "",
        *_geometry_rows(per_cell, cell_keys),
    ]
    summary = _geometry_summary(per_cell, keys, along, bench)
    if along:
        pooled = geometry.cells(
            means.groupby([*keys, "seed"], dropna=False)[list(geometry.COLUMNS)].mean().reset_index(), keys
        )
        lines += [
            "",
            f"Over the whole sweep (each seed's mean over its {along_label(along)} values, then mean ± std over "
            "seeds):",
            "",
            *_geometry_rows(pooled, keys),
        ]
        summary.update(_geometry_summary(pooled, keys, None, bench))
    png = geometry.plot_steps(
        steps,
        [k for k in keys if k != "combiner"],
        along,
        colours(list(c["combiner"].unique())),
        title,
        out / f"geometry_{bench}.png",
    )
    lines += ["", f"![geometry {bench}]({png.name})"]
    return "\n".join(lines) + "\n", per_cell, png, summary
