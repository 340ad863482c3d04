"""Pareto-front plots: forget metric against utility metric, one series per method and combiner,
points labelled by the smoothing rate r."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from unlearn.report.collect import rate_key


@dataclass(frozen=True)
class Axes:
    """Which metrics a benchmark's plot uses and which way is better (from ``benchmark.report``)."""

    forget: str
    utility: str
    forget_higher_is_better: bool = False
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


def _label(metric: str, higher: bool, log: bool = False) -> str:
    arrow = "higher is better →" if higher else "← lower is better"
    return f"{metric}{' (log scale)' if log else ''}   [{arrow}]"


def _short(metric: str) -> str:
    return metric.split("/")[-1]


@dataclass(frozen=True)
class Plotted:
    """What :func:`plot` drew: the PNG, and the cells on the Pareto front (factor columns plus the
    two plotted means), in the order the front line runs (by the forget metric)."""

    path: Path
    front: pd.DataFrame


def _factor_columns(cells: pd.DataFrame) -> list[str]:
    return [k for k in cells.columns if not k.endswith(("_mean", "_std")) and k not in ("n", "n_failed", "n_diverged")]


def plot(cells: pd.DataFrame, axes: Axes, title: str, out: Path) -> Plotted:
    """Write the plot of one benchmark's cells to ``out`` (PNG); return it with the front it drew.

    One series per method + combiner (and per value of any other factor the sweep varies, named in
    the legend); within a series the points run over the smoothing rate r in numeric order and are
    labelled by it; ``r=auto`` points are drawn unconnected (they are no point on the r axis).
    Error bars are the standard deviation over seeds; the grey line is the Pareto front.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from adjustText import adjust_text

    fx, fy = f"{axes.forget}_mean", f"{axes.utility}_mean"
    data = cells.dropna(subset=[fx, fy])
    vary = [k for k in _factor_columns(data) if k not in ("method", "combiner", "rate") and data[k].nunique() > 1]
    label_rates = data["rate"].nunique() > 1
    fig, ax = plt.subplots(figsize=(8, 6), dpi=150)
    markers = "osD^v<>pPX*h"
    texts = []
    for i, (key, g) in enumerate(data.groupby(["method", "combiner", *vary], sort=True)):
        key = key if isinstance(key, tuple) else (key,)
        name = f"{key[0]} + {key[1]}" + ("" if not vary else " (" + ", ".join(f"{k}={v}" for k, v in zip(vary, key[2:])) + ")")
        g = g.iloc[sorted(range(len(g)), key=lambda j: rate_key(g["rate"].iloc[j]))]
        x, y, rates = g[fx].to_numpy(), g[fy].to_numpy(), [str(r) for r in g["rate"]]
        xerr, yerr = g[f"{axes.forget}_std"].to_numpy(), g[f"{axes.utility}_std"].to_numpy()
        bars = ax.errorbar(x, y, xerr=np.nan_to_num(xerr), yerr=np.nan_to_num(yerr), fmt=markers[i % len(markers)],
                           ms=7, alpha=0.9, capsize=2, label=name)
        numeric = np.array([rate_key(r)[0] == 0 for r in rates])
        ax.plot(x[numeric], y[numeric], "-", lw=1, alpha=0.9, color=bars[0].get_color())
        if label_rates:
            texts += [ax.text(xi, yi, f"r={r}", fontsize=8) for xi, yi, r in zip(x, y, rates)]
    x, y = data[fx].to_numpy(), data[fy].to_numpy()
    mask = pareto_mask(x, y, axes.forget_higher_is_better, axes.utility_higher_is_better)
    front = data[mask].iloc[np.argsort(x[mask], kind="stable")]
    if len(front):
        ax.plot(front[fx], front[fy], color="black", lw=6, alpha=0.12, zorder=0, label="Pareto front")
    if axes.forget_log and len(data) and (data[fx] > 0).all():
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(_label(_short(axes.forget), axes.forget_higher_is_better, axes.forget_log))
    ax.set_ylabel(_label(_short(axes.utility), axes.utility_higher_is_better))
    ax.set_title(title + ("\n(mean ± std over seeds)" if (data["n"] > 1).any() else ""), fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    if texts:
        # repel the labels from every marker too (a marker is wider than the point adjust_text sees)
        adjust_text(texts, x=data[fx].to_numpy(), y=data[fy].to_numpy(), ax=ax, expand=(1.3, 1.8),
                    arrowprops=dict(arrowstyle="-", color="gray", lw=0.5))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return Plotted(out, front[[*_factor_columns(front), fx, fy]].reset_index(drop=True))
