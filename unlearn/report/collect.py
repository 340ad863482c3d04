"""Reading a sweep's run directories into one table (no W&B needed: the run dirs are the record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from unlearn.labels import method_label
from unlearn.resume import COMPLETE
from unlearn.rules import is_number
from unlearn.rundir import read_json

SKIP_DIRS = {"checkpoints", "wandb", ".submitit", "model", ".hydra"}
#: a job whose results.json (or config.json) cannot be read gets this status, and its path as reason
DAMAGED = "damaged"
#: the per-cell counts :func:`cells` adds beside the factors
COUNT_COLUMNS = ("n", "n_failed", "n_diverged", "n_unfinished", "unfinished")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
#: overrides that never define a cell of the grid (seeds are what a cell averages over)
NOT_A_FACTOR = ("seed", "sweep", "group", "launcher", "sweeper", "resume", "paths.cache_dir")
#: the label of a factor whose value the run directory does not tell
UNKNOWN = "?"
#: the factor naming the method preset (``method.name``), which chose hyperparameters, not the options
PRESET = "preset"


def run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` holding a ``results.json`` (sweep jobs, single runs)."""
    out = []
    for p in sorted(root.rglob("results.json")):
        if not SKIP_DIRS.intersection(p.relative_to(root).parts[:-1]):
            out.append(p.parent)
    return out


def is_interpolation(value: Any) -> bool:
    """An OmegaConf interpolation left unresolved (``'${oc.select:...}'``), as old run dirs and jobs
    that failed before their config resolved have in ``config.json``."""
    return isinstance(value, str) and value.lstrip().startswith("${")


def rate_label(value: Any) -> str:
    """``smoothing.rate`` as a grid label: a number as Python prints it (``0.5``, ``-0.5``, ``0``),
    so a command-line ``0.50`` and a config ``0.5`` are one cell; anything else (``auto``) as is."""
    if isinstance(value, str):
        for cast in (int, float):
            try:
                return str(cast(value))
            except ValueError:
                pass
    return str(value)


def rate_key(label: Any) -> tuple[int, float, str]:
    """Sort key for rate labels: numbers in numeric order, then ``auto``, then anything else."""
    try:
        return (0, float(label), "")
    except (TypeError, ValueError):
        return (1 if label == "auto" else 2, 0.0, str(label))


def _resolve(config: dict[str, Any], key: str) -> Any:
    """``key`` of a stored config with its interpolations resolved against that config; None when
    it does not resolve (a missing key, an environment-dependent resolver)."""
    from omegaconf import OmegaConf

    try:
        value = OmegaConf.select(OmegaConf.create(config), key, throw_on_resolution_failure=False)
    except Exception:  # a config OmegaConf cannot read back: the value is unknown, not an error
        return None
    return None if value is None or is_interpolation(value) else value


def _options(group: str) -> dict[str, dict[str, Any]]:
    """``conf/<group>/*.yaml`` as plain dicts (a file's ``defaults`` merged in), by option name."""
    import yaml

    raw = {p.stem: yaml.safe_load(p.read_text()) or {} for p in sorted((CONF_DIR / group).glob("*.yaml"))}

    def flat(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
        node = dict(raw.get(name, {}))
        out: dict[str, Any] = {}
        for base in node.pop("defaults", []) or []:
            if isinstance(base, str) and base != "_self_" and base not in seen:
                out.update(flat(base, (*seen, name)))
        out.update(node)
        return out

    return {name: flat(name) for name in raw}


def group_option(group: str, node: Any) -> str:
    """The ``group=`` option (forget, retain, combiner) a stored config node came from, for runs
    that do not record their Hydra choices: the option of the same ``_target_`` that agrees on the
    most keys (ties: the one named like the class), else the class name in lower case
    (``unlearn.combiners.SAGO`` → ``sago``)."""
    if not isinstance(node, dict) or is_interpolation(node.get("_target_")) or not node.get("_target_"):
        return UNKNOWN
    target = str(node["_target_"])
    cls = target.rsplit(".", 1)[-1].lower()
    scored = [
        (sum(node.get(k) == v for k, v in opt.items()), name == cls, name)
        for name, opt in _options(group).items()
        if opt.get("_target_") == target
    ]
    return max(scored)[2] if scored else cls


def combiner_option(combiner: Any) -> str:
    """:func:`group_option` of a stored combiner config (``sago_prefer_retain``, ``pcgrad``)."""
    return group_option("combiner", combiner)


def _choices(d: Path) -> dict[str, str]:
    """Hydra's config-group choices of the job (``.hydra/hydra.yaml``: ``combiner: sago``), or {}."""
    hydra_file = d / ".hydra" / "hydra.yaml"
    if not hydra_file.exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(hydra_file.read_text())
        choices = data["hydra"]["runtime"]["choices"]
    except Exception:  # an unreadable Hydra record only costs the option names their source
        return {}
    return {str(k): str(v) for k, v in choices.items() if v is not None} if isinstance(choices, dict) else {}


def _overrides(d: Path, prov: dict[str, Any]) -> list[str]:
    """The job's overrides: from provenance.json, else Hydra's ``.hydra/overrides.yaml`` (a job that
    failed validation has no provenance yet, and without its overrides it would be a cell of its own)."""
    if "overrides" in prov:
        return [str(o) for o in prov["overrides"]]
    hydra_file = d / ".hydra" / "overrides.yaml"
    if hydra_file.exists():
        import yaml

        data = yaml.safe_load(hydra_file.read_text())
        return [str(o) for o in data] if isinstance(data, list) else []
    return []


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    results: dict[str, Any]
    overrides: list[str]
    provenance: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)

    @property
    def benchmark(self) -> str:
        return self._name("benchmark")

    @property
    def group(self) -> str | None:
        """The W&B group the job logged to (provenance.json), else the ``group`` it was given."""
        for value in (self.provenance.get("group"), self.config.get("group")):
            if value and not is_interpolation(value):
                return str(value)
        return None

    def _name(self, node: str) -> str:
        sub = self.config.get(node)
        value = sub.get("name") if isinstance(sub, dict) else None
        if is_interpolation(value):
            value = _resolve(self.config, f"{node}.name")
        return UNKNOWN if value is None else str(value)

    def _override(self, key: str) -> str | None:
        for o in reversed(self.overrides):
            k, _, value = o.partition("=")
            if k.lstrip("+~") == key and not is_interpolation(value):
                return value
        return None

    def rate(self) -> str:
        """The configured smoothing rate as a label (see :func:`rate_label`): from config.json, or,
        where it holds an unresolved interpolation, from the overrides or by resolving it there."""
        smoothing = self.config.get("smoothing")
        if not isinstance(smoothing, dict):
            return rate_label(0.0)
        value = smoothing.get("rate", 0.0)
        if is_interpolation(value):
            value = self._override("smoothing.rate")
            if value is None:
                value = _resolve(self.config, "smoothing.rate")
        return UNKNOWN if value is None else rate_label(value)

    def option(self, group: str) -> str:
        """The option of ``group`` (forget, retain, combiner) as the command line names it
        (``sago``, ``pcgrad``, not the class): the ``group=`` override, else Hydra's recorded choice,
        else :func:`group_option` of the stored config."""
        return self._override(group) or self.choices.get(group) or group_option(group, self.config.get(group))

    def combiner(self) -> str:
        return self.option("combiner")

    def method(self) -> str:
        """The losses that ran, ``{forget}+{retain}`` (``simnpo+nll``; :mod:`unlearn.labels`),
        whichever preset or override chose them; ``?`` when neither is known."""
        forget, retain = self.option("forget"), self.option("retain")
        return UNKNOWN if forget == retain == UNKNOWN else method_label(forget, retain)

    def factors(self) -> dict[str, str]:
        """The run's coordinates in the grid: method (the forget and retain options), combiner,
        rate, model, benchmark, the method preset (``preset``, see :func:`frame`), and every other
        override except the seed (numbers as :func:`rate_label` prints them)."""
        out = {
            "benchmark": self.benchmark,
            "model": self._name("model"),
            "method": self.method(),
            "combiner": self.combiner(),
            "rate": self.rate(),
            PRESET: self._name("method"),
        }
        covered = {"benchmark", "model", "method", "forget", "retain", "combiner", "smoothing.rate"}
        for o in self.overrides:
            key, _, value = o.partition("=")
            key = key.lstrip("+~")
            if key not in covered and not key.startswith(NOT_A_FACTOR) and not key.startswith("hydra."):
                out[key] = rate_label(value)  # a command-line 1e-3 and 0.001 are one cell
        return out


def _read(path: Path, damage: list[str]) -> dict[str, Any]:
    """``path`` as JSON ({} when absent); a truncated or corrupt file reads as {} and is named in
    ``damage`` (a job killed mid-write must not take the whole report down)."""
    if not path.exists():
        return {}
    try:
        data = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        damage.append(f"{path} is unreadable ({type(e).__name__}: {e})")
        return {}
    if not isinstance(data, dict):
        damage.append(f"{path} holds {type(data).__name__}, not a JSON object")
        return {}
    return data


def load_runs(root: Path) -> list[Run]:
    """Every run directory under ``root``; one whose results.json or config.json cannot be read is
    a run with status ``damaged`` and the file's path and error as its reason."""
    runs = []
    for d in run_dirs(root):
        damage: list[str] = []
        results = _read(d / "results.json", damage)
        config = _read(d / "config.json", damage)
        prov = _read(d / "provenance.json", damage)
        if damage:
            results = {"status": DAMAGED, "reason": "; ".join(damage)}
        runs.append(Run(d, config, results, _overrides(d, prov), prov, _choices(d)))
    return one_per_job(runs)


def one_per_job(runs: list[Run]) -> list[Run]:
    """Each job (``config_hash``: its config, seed included) once. A sweep run again with more
    values numbers its job folders anew, so a job can sit in two folders (its old number's, and the
    new one's where it ran again); counted twice, it weighed double in its cell's mean and std.
    Kept: a finished run before an unfinished one, then the most recently written."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        h = r.results.get("config_hash")
        if isinstance(h, str):
            groups.setdefault(h, []).append(r)
    left_out: set[Path] = set()
    for same in groups.values():
        if len(same) > 1:
            keep = max(
                same, key=lambda r: (r.results.get("status") in COMPLETE, (r.path / "results.json").stat().st_mtime)
            )
            left_out |= {r.path for r in same if r is not keep}
    if left_out:
        import sys

        print(
            f"report: {len(left_out)} run folder(s) repeat a job of another folder (the same config hash); each job "
            f"is counted once, leaving out {', '.join(sorted(p.name for p in left_out))}",
            file=sys.stderr,
        )
    return [r for r in runs if r.path not in left_out]


def frame(runs: list[Run]) -> pd.DataFrame:
    """One row per run: its factors, seed, status, and every numeric result. The ``preset`` column
    (``method.name``) is kept only where two presets ran the same options on a benchmark
    (``method=npo forget=simnpo`` beside ``method=simnpo``: other learning rates and betas), so
    their runs stay apart rather than averaged into one cell."""
    rows = []
    for r in runs:
        row: dict[str, Any] = {
            **r.factors(),
            "seed": r.config.get("seed"),
            "status": r.results.get("status"),
            "reason": r.results.get("reason"),
            "run": str(r.path),
        }
        for k, v in r.results.items():
            if is_number(v):
                row[k] = float(v)
        rows.append(row)
    df = pd.DataFrame(rows)
    if (
        PRESET in df
        and df.groupby(["benchmark", "method", "combiner"], dropna=False)[PRESET].nunique(dropna=False).max() <= 1
    ):
        df = df.drop(columns=PRESET)  # it says nothing the label does not
    return df


def cells(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean and standard deviation (over seeds) of ``metrics`` per grid cell, ok runs only.

    Columns: the factors, ``n`` (ok runs), ``n_failed``/``n_diverged``, ``n_unfinished`` (every run
    not ok: failed, diverged, collapsed, interrupted, damaged, ...) and ``unfinished`` (those counts in
    words, ``"1 diverged, 2 collapsed"``), ``<m>_mean``, ``<m>_std``, ``<m>_n`` (the ok runs that
    report ``m``: a metric some seeds lack, e.g. privleak without an oracle record, is averaged over
    fewer); rows sorted by the factors,
    numbers (rates, learning rates) by :func:`rate_key`.
    """
    factors = factor_names(df, metrics)
    df = df.copy()
    for c in factors:
        df[c] = df[c].fillna("")
    out = []
    for key, g in df.groupby(factors, sort=True, dropna=False):
        ok = g[g["status"] == "ok"]
        row = dict(zip(factors, key if isinstance(key, tuple) else (key,), strict=True))
        bad = g["status"][g["status"] != "ok"].fillna("unknown").astype(str)
        row.update(
            n=len(ok),
            n_diverged=int((bad == "diverged").sum()),
            n_failed=int((bad == "failed").sum()),
            n_unfinished=len(bad),
            unfinished=", ".join(f"{k} {s}" for s, k in sorted(bad.value_counts().items())),
        )
        for m in metrics:
            vals = ok[m].dropna().to_numpy() if m in ok else np.array([])
            row[f"{m}_mean"] = float(vals.mean()) if vals.size else np.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else (0.0 if vals.size else np.nan)
            row[f"{m}_n"] = int(vals.size)  # fewer than n where some ok runs lack the metric
        out.append(row)
    # labels are strings ('auto' among numbers): order numbers as numbers, 'auto' last
    out.sort(key=lambda row: tuple(rate_key(row[f]) for f in factors))
    return pd.DataFrame(out)


def factor_names(df: pd.DataFrame, metrics: Sequence[str] = ()) -> list[str]:
    """The factor columns of a :func:`frame` (or :func:`cells`) table: neither metrics, counts nor
    the per-run bookkeeping."""
    skip = ("seed", "status", "reason", "run", *COUNT_COLUMNS)
    return [
        c
        for c in df.columns
        if c not in metrics
        and c not in skip
        and not c.endswith(("_mean", "_std"))
        and not c.startswith(("eval/", "target/", "oracle/", "unlearned/", "train/", "time/", "config_"))
    ]
