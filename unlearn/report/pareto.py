"""Pareto-front plots: forget metric against utility metric, one curve per method and combiner
along the key the sweep varies (lr, steps, rate, alpha/gamma), points labelled by its value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from unlearn.report.collect import factor_names
from unlearn.report.curves import along_label, is_number, ordered, series_keys, series_name

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn, not with the report package
    from matplotlib.axes import Axes as PlotAxes


@dataclass(frozen=True)
class Axes:
    """Which metrics a benchmark's plot uses and which way is better (from ``benchmark.report``).
    ``forget_higher_is_better=None``: not known (a metric matched on by ``--match``), so no front
    is drawn and the axis claims no direction."""

    forget: str
    utility: str
    forget_higher_is_better: bool | None = False
    forget_log: bool = False
    utility_higher_is_better: bool = True


def pareto_mask(x: np.ndarray, y: np.ndarray, x_high: bool, y_high: bool) -> np.ndarray:
    """Points not dominated by any other (better or equal on both axes, strictly on one)."""
    sx = x if x_high else -x
    sy = y if y_high else -y
    keep = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        dominated = (sx >= sx[i]) & (sy >= sy[i]) & ((sx > sx[i]) | (sy > sy[i]))
        keep[i] = not dominated.any()
    return keep


def _label(metric: str, higher: bool | None, log: bool = False) -> str:
    scale = " (log scale)" if log else ""
    if higher is None:
        return metric + scale
    arrow = "higher is better →" if higher else "← lower is better"
    return f"{metric}{scale}   [{arrow}]"


def _short(metric: str) -> str:
    return metric.split("/")[-1]


@dataclass(frozen=True)
class Plotted:
    """What :func:`plot` drew: the PNG, the cells on the Pareto front (factor columns plus the
    two plotted means), in the order the front line runs (by the forget metric), and the curves
    (legend name -> the ``along`` values of its points, in the order the line joins them)."""

    path: Path
    front: pd.DataFrame
    curves: dict[str, list[str]] = field(default_factory=dict)


def _factor_columns(cells: pd.DataFrame) -> list[str]:
    return factor_names(cells)


def colours(names: list[str]) -> dict[str, tuple]:
    """One colour per combiner option (tab10 order, by sorted name), shared by every plot."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(sorted(names))}


def _log_axis(ax: PlotAxes, values: np.ndarray) -> None:
    """A log x axis whose tick labels do not collide: 1-2-5 ticks over at most two decades, one tick
    per decade beyond (every other decade beyond six)."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    decades = np.log10(values.max() / values.min()) if len(values) else 0.0
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(
        LogLocator(base=10.0 if decades <= 6 else 100.0, subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,))
    )
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def error_low(x: np.ndarray, std: np.ndarray, log: bool) -> np.ndarray:
    """The lower error bar: one std, but on a log axis never below a tenth of the value (where
    mean − std ≤ 0 the bar would run to the edge of the plot)."""
    std = np.nan_to_num(std)
    return np.minimum(std, 0.9 * x) if log else std


def _value(v: str) -> str:
    return f"{float(v):g}" if is_number(v) else str(v)


def plot(
    cells: pd.DataFrame,
    axes: Axes,
    title: str,
    out: Path,
    along: str | None = None,
    levels: Sequence[tuple[str, float]] = (),
) -> Plotted:
    """Write the plot of one benchmark's cells to ``out`` (PNG); return it with the front it drew.

    One curve per method + combiner (and per value of any other factor the sweep varies besides
    ``along``, named in the legend), colour by combiner, marker and line style by method; within a
    curve the points run along ``along`` (:func:`~unlearn.report.curves.along_key`) in numeric
    order and are labelled ``lr=0.004``; non-numeric values (``r=auto``) are drawn unconnected.
    Error bars are the standard deviation over seeds (on a log axis cut at a tenth of the value,
    where the mean minus one std would be at or below zero); the grey line is the Pareto front;
    ``levels`` (name, forget value) are drawn as dotted vertical lines (the matched-forgetting levels).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from adjustText import adjust_text

    fx, fy = f"{axes.forget}_mean", f"{axes.utility}_mean"
    data = cells.dropna(subset=[fx, fy])
    keys = series_keys(data, along)
    log_x = axes.forget_log and len(data) > 0 and bool((data[fx] > 0).all())
    colour = colours(list(data["combiner"].unique()))
    methods = sorted(data["method"].unique())
    fig, ax = plt.subplots(figsize=(9, 6.5), dpi=150)
    markers, styles = "osD^v<>pPX*h", ("-", "--", ":", "-.")
    texts, curves, handles = [], {}, []
    label_points = along is not None and data[along].nunique() > 1
    for key, g in data.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        g = ordered(g, along)
        m = methods.index(key[0])
        x, y = g[fx].to_numpy(), g[fy].to_numpy()
        xerr, yerr = (
            np.nan_to_num(g[f"{axes.forget}_std"].to_numpy()),
            np.nan_to_num(g[f"{axes.utility}_std"].to_numpy()),
        )
        ax.errorbar(
            x,
            y,
            xerr=[error_low(x, xerr, log_x), xerr],
            yerr=yerr,
            fmt=markers[m % len(markers)],
            ms=6,
            alpha=0.9,
            capsize=2,
            color=colour[key[1]],
            elinewidth=0.8,
        )
        numeric = np.array([is_number(v) for v in g[along]]) if along is not None else np.ones(len(g), dtype=bool)
        handles += ax.plot(
            x[numeric],
            y[numeric],
            styles[m % len(styles)],
            marker=markers[m % len(markers)],
            ms=6,
            lw=1.2,
            alpha=0.9,
            color=colour[key[1]],
            label=series_name(key, keys),
        )
        curves[series_name(key, keys)] = [str(v) for v in g[along]] if along is not None else []
        if label_points:
            texts += [
                ax.text(xi, yi, _value(v), fontsize=7, color=colour[key[1]])
                for xi, yi, v in zip(x, y, g[along], strict=True)
            ]
    x, y = data[fx].to_numpy(), data[fy].to_numpy()
    if axes.forget_higher_is_better is None:
        front = data.iloc[:0]
    else:
        mask = pareto_mask(x, y, axes.forget_higher_is_better, axes.utility_higher_is_better)
        front = data[mask].iloc[np.argsort(x[mask], kind="stable")]
    if len(front):
        handles += ax.plot(front[fx], front[fy], color="black", lw=6, alpha=0.12, zorder=0, label="Pareto front")
    # levels sit close together: named once each kind in the legend, not in text that would collide
    for kind, (style, colour_) in {"oracle": ("--", "black"), "": (":", "gray")}.items():
        at = [v for n, v in levels if (n == "oracle") == (kind == "oracle")]
        for j, level in enumerate(at):
            line = ax.axvline(
                level,
                color=colour_,
                ls=style,
                lw=1,
                alpha=0.8,
                label=f"oracle {_short(axes.forget)}" if kind else "matched levels (shared range)",
            )
            if j == 0:
                handles.append(line)
    if log_x:
        _log_axis(ax, x)
    ax.set_xlabel(_label(_short(axes.forget), axes.forget_higher_is_better, log_x))
    ax.set_ylabel(_label(_short(axes.utility), axes.utility_higher_is_better))
    sub = [f"points labelled by {along_label(along)} ({along})"] if label_points else []
    if (data["n"] > 1).any():
        sub.append("mean ± std over seeds")
    ax.set_title(title + ("\n(" + "; ".join(sub) + ")" if sub else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), framealpha=0.9)
    if texts:
        # repel the labels from every marker too (a marker is wider than the point adjust_text sees)
        adjust_text(texts, x=x, y=y, ax=ax, expand=(1.3, 1.8), arrowprops=dict(arrowstyle="-", color="gray", lw=0.5))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return Plotted(out, front[[*_factor_columns(front), fx, fy]].reset_index(drop=True), curves)
