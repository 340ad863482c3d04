"""Gradient geometry of a sweep: the per-step diagnostics every run logs to ``metrics.jsonl``
(``train/grad/...``, :func:`unlearn.combiners.diagnostics.gradient_diagnostics`), averaged over
steps per run and over seeds per cell. The SAGO paper's geometric claim is that the update's cosine
with ``g_r`` is highest for SAGO, then PCGrad, then the plain sum."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unlearn.report.collect import Run

#: column -> what the report calls it; all but ``norm_ratio`` are logged as ``train/grad/<column>``
COLUMNS = {
    "cos_update_retain": "cos(update, g_r)",
    "cos_update_forget": "cos(update, g_f)",
    "cos_forget_retain": "cos(g_f, g_r)",
    "conflict_frac": "conflict fraction",
    "norm_ratio": "‖update‖ / ‖γ g_f + α g_r‖",
}
LOGGED = (
    "cos_update_retain",
    "cos_update_forget",
    "cos_forget_retain",
    "conflict_frac",
    "norm_update",
    "norm_forget",
    "norm_retain",
)


def read_steps(path: Path) -> pd.DataFrame:
    """The unlearning phase's per-step gradient diagnostics in ``path`` (``metrics.jsonl``), one row
    per step (a resumed run's repeated step: its last row), plus ``norm_ratio``; lines a killed job
    left half-written are skipped. Empty when the file or the diagnostics are missing."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if (
                isinstance(row, dict)
                and row.get("phase", "unlearn") == "unlearn"
                and "train/grad/cos_update_retain" in row
            ):
                rows.append({"step": row.get("step"), **{k: _num(row.get(f"train/grad/{k}")) for k in LOGGED}})
    if not rows:
        return pd.DataFrame(columns=["step", *LOGGED])
    return pd.DataFrame(rows).drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def with_norm_ratio(steps: pd.DataFrame, alpha: float, gamma: float) -> pd.DataFrame:
    """Add ``norm_ratio`` = ‖update‖ / ‖γ g_f + α g_r‖, the sum's norm from the logged norms and
    cosine: ‖γ g_f + α g_r‖² = γ²‖g_f‖² + α²‖g_r‖² + 2αγ‖g_f‖‖g_r‖cos(g_f, g_r)."""
    nf, nr, c = steps["norm_forget"], steps["norm_retain"], steps["cos_forget_retain"]
    sq = (gamma * nf) ** 2 + (alpha * nr) ** 2 + 2 * alpha * gamma * nf * nr * c
    out = steps.copy()
    out["norm_ratio"] = steps["norm_update"] / np.sqrt(sq.clip(lower=0)).where(sq > 0)
    return out


def run_steps(run: Run) -> pd.DataFrame:
    given = run.config.get("combiner")
    combiner = given if isinstance(given, dict) else {}
    alpha, gamma = (_num(combiner.get(k, 1.0)) for k in ("alpha", "gamma"))
    return with_norm_ratio(
        read_steps(run.path / "metrics.jsonl"), 1.0 if np.isnan(alpha) else alpha, 1.0 if np.isnan(gamma) else gamma
    )


def per_run(runs: list[Run], factors: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(means, steps) of the finished runs that logged diagnostics: ``means`` one row per run (its
    ``factors``, seed, and the mean over steps of each :data:`COLUMNS`), ``steps`` one row per run
    and step (factors, seed, step, each column)."""
    means, steps = [], []
    for r in runs:
        if r.results.get("status") != "ok":
            continue
        s = run_steps(r)
        if s.empty:
            continue
        f: dict[str, Any] = {k: v for k, v in r.factors().items() if k in factors}
        f["seed"] = r.config.get("seed")
        means.append({**f, **{c: float(s[c].mean()) for c in COLUMNS}})
        steps.append(s.assign(**f)[[*f, "step", *COLUMNS]])
    if not means:
        return pd.DataFrame(), pd.DataFrame()
    return pd.DataFrame(means), pd.concat(steps, ignore_index=True)


def cells(means: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean ± std over seeds per cell (``keys``) of each run's step mean; ``n`` runs per cell."""
    g = means.groupby(keys, sort=False)
    out = g[list(COLUMNS)].agg(["mean", "std"])
    out.columns = [f"{c}_{s}" for c, s in out.columns]
    out.insert(0, "n", g.size())
    return out.reset_index()


def plot_steps(
    steps: pd.DataFrame, panels: list[str], along: str | None, colour: dict, title: str, out: Path, max_rows: int = 4
) -> Path:
    """cos(update, g_r) against the step, one line per combiner (mean over seeds, band ± std), one
    panel per method (columns) and per value of ``along`` (rows; at most ``max_rows``, spread over
    the sweep, named in the panel)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unlearn.report.curves import along_label, ordered

    cols = sorted(steps.groupby(panels).groups) if panels else [()]
    values = list(ordered(steps.drop_duplicates(along), along)[along]) if along else [None]
    if len(values) > max_rows:
        values = [values[i] for i in np.unique(np.linspace(0, len(values) - 1, max_rows).round().astype(int))]
    fig, axs = plt.subplots(
        len(values),
        len(cols),
        figsize=(4.2 * len(cols) + 1.5, 2.8 * len(values) + 0.8),
        dpi=130,
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for i, v in enumerate(values):
        for j, col in enumerate(cols):
            col = col if isinstance(col, tuple) else (col,)
            ax = axs[i][j]
            sel = steps[(steps[panels] == pd.Series(col, index=panels)).all(axis=1)] if panels else steps
            sel = sel[sel[along] == v] if along else sel
            for comb, g in sorted(sel.groupby("combiner")):
                m = g.groupby("step")["cos_update_retain"].agg(["mean", "std"])
                ax.plot(m.index, m["mean"], color=colour.get(comb), lw=1.4, label=comb)
                ax.fill_between(
                    m.index,
                    m["mean"] - m["std"].fillna(0),
                    m["mean"] + m["std"].fillna(0),
                    color=colour.get(comb),
                    alpha=0.15,
                    lw=0,
                )
            name = ", ".join(str(c) for c in col) + (f", {along_label(along)}={v}" if along else "")
            ax.set_title(name, fontsize=9)
            ax.axhline(0, color="gray", lw=0.6)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("cos(update, g_r)")
            if i == len(values) - 1:
                ax.set_xlabel("step")
    handles, labels = axs[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles, strict=True))
    for row in axs:
        for ax in row:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen), title="combiner", loc="center right", fontsize=8)
    fig.suptitle(title + "\n(mean over seeds, band ± std)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
