"""A sweep's cells as curves: one per method (forget+retain) and combiner (and any other factor that is not swept
along), running along the one key the sweep varies (``optim.lr``, ``train.steps``,
``smoothing.rate``, ``combiner.alpha``, ...), and the utility each curve reaches at a given
forgetting level (linear interpolation between the two sweep points that bracket it, per seed)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import pandas as pd

from unlearn.report.collect import factor_names, rate_key

#: what every series is told apart by; never the key a curve runs along
SERIES = ("method", "combiner")
#: factors that name the setting rather than a point on a trade-off curve
NOT_ALONG = ("benchmark", "model", "method", "combiner", "preset", "experiment")


def is_number(label: object) -> bool:
    return rate_key(label)[0] == 0


def along_key(cells: pd.DataFrame, explicit: str | None = None) -> str | None:
    """The factor the curves run along: ``explicit`` (``--along``), else the numeric factor the
    sweep varies with the most values (``rate`` wins ties: it is the paper's axis); None when no
    numeric factor varies (each series is then one point)."""
    factors = factor_names(cells)
    if explicit is not None:
        if explicit not in factors:
            raise SystemExit(f"report: --along {explicit!r} is not a factor of this sweep; its factors are {factors}")
        return explicit
    numeric = [
        k
        for k in factors
        if k not in NOT_ALONG and cells[k].nunique() > 1 and sum(is_number(v) for v in cells[k].unique()) > 1
    ]
    if not numeric:
        return None
    return max(numeric, key=lambda k: (sum(is_number(v) for v in cells[k].unique()), k == "rate"))


def series_keys(cells: pd.DataFrame, along: str | None) -> list[str]:
    """method, combiner, and every other factor that varies but is not ``along`` (those are named in
    the series' label)."""
    rest = [k for k in factor_names(cells) if k not in (*SERIES, along, "benchmark") and cells[k].nunique() > 1]
    return [*SERIES, *rest]


def along_label(along: str | None) -> str:
    """How a point's sweep value is labelled: ``lr=0.004``, ``r=0.5``, ``steps=20``."""
    return "r" if along == "rate" else (along or "").rsplit(".", 1)[-1]


def series_name(key: tuple, keys: list[str]) -> str:
    """``{method}+{combiner}``, the run label (``simnpo+nll+pcgrad``, :mod:`unlearn.labels`), then
    the other factors that tell series apart: ``simnpo+nll+sum (preset=npo)``."""
    extra = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys[2:], key[2:], strict=True)]
    return f"{key[0]}+{key[1]}" + (f" ({', '.join(extra)})" if extra else "")


def series_path(row: Mapping[str, Any], keys: list[str]) -> str:
    """A series' part of a W&B summary key: ``{method}/{combiner}``, then ``name=value`` for each
    other factor that tells series apart (``ga+nll/sum/rate=0.5``), so no two series share one."""
    extra = [f"{k.rsplit('.', 1)[-1]}={row[k]}" for k in keys[2:]]
    return "/".join([str(row[keys[0]]), str(row[keys[1]]), *extra])


def ordered(g: pd.DataFrame, along: str | None) -> pd.DataFrame:
    """``g``'s rows in the sweep's order along ``along`` (numbers numerically, ``auto`` last)."""
    if along is None:
        return g
    return g.iloc[sorted(range(len(g)), key=lambda j: rate_key(g[along].iloc[j]))]


@dataclass(frozen=True)
class Crossing:
    """Where a curve reaches a level: the interpolated values and the along-key value there."""

    values: dict[str, float]
    at: float


def crossing(x: np.ndarray, ys: dict[str, np.ndarray], along: np.ndarray, level: float) -> Crossing | None:
    """The first point along the curve where ``x`` reaches ``level``: ``ys`` interpolated linearly
    in ``x`` between the two points that bracket it (and ``along`` too, geometrically when every
    value is positive, as learning rates are swept); None when the curve never reaches it."""
    for i in range(len(x)):
        if x[i] == level:
            return Crossing({k: float(y[i]) for k, y in ys.items()}, float(along[i]))
        if i + 1 < len(x) and (x[i] - level) * (x[i + 1] - level) < 0:
            t = (level - x[i]) / (x[i + 1] - x[i])
            a0, a1 = along[i], along[i + 1]
            at = math.exp(math.log(a0) + t * (math.log(a1) - math.log(a0))) if a0 > 0 and a1 > 0 else a0 + t * (a1 - a0)
            return Crossing({k: float(y[i] + t * (y[i + 1] - y[i])) for k, y in ys.items()}, float(at))
    return None


def is_monotone(x: np.ndarray) -> bool:
    d = np.diff(x)
    return bool((d >= 0).all() or (d <= 0).all())


def shared_levels(curves: list[np.ndarray], quantiles: tuple[float, ...] = (0.25, 0.5, 0.75)) -> list[float]:
    """Levels every curve spans: ``quantiles`` of the range [max of the minima, min of the maxima]
    of the curves' (seed-mean) values; [] when the curves share no range."""
    spans = [(np.nanmin(c), np.nanmax(c)) for c in curves if np.isfinite(c).sum() > 1]
    if not spans:
        return []
    lo, hi = max(s[0] for s in spans), min(s[1] for s in spans)
    return [float(lo + q * (hi - lo)) for q in quantiles] if hi > lo else []


def _centre(at: list[float]) -> float:
    """The seeds' along-key values at a level: their geometric mean where all are positive (a
    learning rate), else the arithmetic one; NaN for none."""
    if not at:
        return float("nan")
    return float(np.exp(np.mean(np.log(at)))) if all(a > 0 for a in at) else float(np.mean(at))


def matched(
    runs: pd.DataFrame,
    keys: list[str],
    along: str | None,
    match: str,
    utilities: list[str],
    levels: list[tuple[str, float]],
) -> pd.DataFrame:
    """Each curve's ``utilities`` at each of ``levels`` of ``match``, mean ± std over seeds.

    ``runs`` holds one row per finished run (:func:`~unlearn.report.collect.frame`). Per seed, the
    curve is that seed's runs in sweep order and is interpolated by :func:`crossing`; ``n`` is the
    number of seeds whose curve reaches the level. Columns: ``level`` (its name), ``value``, the
    series ``keys``, ``n``, ``at_mean`` (the along-key value there) and ``<u>_mean``/``<u>_std``.
    """
    rows = []
    for name, level in levels:
        for key, g in runs.groupby(keys, sort=True):
            key = key if isinstance(key, tuple) else (key,)
            hits = []
            for _, s in g.groupby("seed", dropna=False):
                s = ordered(s.dropna(subset=[match]), along)
                if along is not None:
                    s = s[[is_number(v) for v in s[along]]]
                a = s[along].astype(float).to_numpy() if along is not None else np.zeros(len(s))
                hit = crossing(
                    s[match].to_numpy(float), {u: s[u].to_numpy(float) for u in utilities if u in s}, a, level
                )
                if hit is not None:
                    hits.append(hit)
            row = {
                "level": name,
                "value": level,
                **dict(zip(keys, key, strict=True)),
                "n": len(hits),
                "at_mean": _centre([h.at for h in hits]),
            }
            for u in utilities:
                vals = np.array([h.values[u] for h in hits if u in h.values])
                row[f"{u}_mean"] = float(vals.mean()) if vals.size else np.nan
                row[f"{u}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else (0.0 if vals.size else np.nan)
            rows.append(row)
    return pd.DataFrame(rows)
