"""Reading a sweep's run directories into one table (no W&B needed: the run dirs are the record)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unlearn.rundir import read_json

SKIP_DIRS = {"checkpoints", "wandb", ".submitit", "model", ".hydra"}
#: overrides that never define a cell of the grid (seeds are what a cell averages over)
NOT_A_FACTOR = ("seed", "sweep", "group", "launcher", "sweeper", "resume", "paths.cache_dir")


def run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` holding a ``results.json`` (sweep jobs, single runs)."""
    out = []
    for p in sorted(root.rglob("results.json")):
        if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]):
            out.append(p.parent)
    return out


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    results: dict[str, Any]
    overrides: list[str]

    @property
    def benchmark(self) -> str:
        return str(self.config.get("benchmark", {}).get("name", "?"))

    def factors(self) -> dict[str, str]:
        """The run's coordinates in the grid: method, combiner, rate, model, benchmark, and every
        other override except the seed."""
        cfg = self.config
        target = str(cfg.get("combiner", {}).get("_target_", "?")).rsplit(".", 1)[-1]
        rate = cfg.get("smoothing", {}).get("rate", 0.0) if isinstance(cfg.get("smoothing"), dict) else 0.0
        out = {
            "benchmark": self.benchmark,
            "model": str(cfg.get("model", {}).get("name", "?")),
            "method": str(cfg.get("method", {}).get("name", "?")),
            "combiner": target,
            "rate": str(rate),
        }
        covered = {"benchmark", "model", "method", "combiner", "smoothing.rate"}
        for o in self.overrides:
            key, _, value = o.partition("=")
            key = key.lstrip("+~")
            if key not in covered and not key.startswith(NOT_A_FACTOR) and not key.startswith("hydra."):
                out[key] = value
        return out


def load_runs(root: Path) -> list[Run]:
    runs = []
    for d in run_dirs(root):
        results = read_json(d / "results.json")
        config = read_json(d / "config.json") if (d / "config.json").exists() else {}
        prov = read_json(d / "provenance.json") if (d / "provenance.json").exists() else {}
        runs.append(Run(d, config, results, list(prov.get("overrides", []))))
    return runs


def frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: its factors, seed, status, and every numeric result."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {**r.factors(), "seed": r.config.get("seed"), "status": r.results.get("status"), "reason": r.results.get("reason"), "run": str(r.path)}
        for k, v in r.results.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                row[k] = float(v)
        rows.append(row)
    return pd.DataFrame(rows)


def cells(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean and standard deviation (over seeds) of ``metrics`` per grid cell, ok runs only.

    Columns: the factors, ``n`` (ok runs), ``n_failed``/``n_diverged``, ``<m>_mean``, ``<m>_std``.
    """
    factors = [c for c in df.columns if c not in metrics and c not in ("seed", "status", "reason", "run") and not c.startswith(("eval/", "target/", "oracle/", "unlearned/", "train/", "time/", "config_"))]
    df = df.copy()
    for c in factors:
        df[c] = df[c].fillna("")
    out = []
    for key, g in df.groupby(factors, sort=True, dropna=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(factors, key if isinstance(key, tuple) else (key,)))
        row.update(n=len(ok), n_diverged=int((g["status"] == "diverged").sum()), n_failed=int((g["status"] == "failed").sum()))
        for m in metrics:
            vals = ok[m].dropna().to_numpy() if m in ok else np.array([])
            row[f"{m}_mean"] = float(vals.mean()) if vals.size else np.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else (0.0 if vals.size else np.nan)
        out.append(row)
    return pd.DataFrame(out)
