"""What Hydra needs before it composes a config: where ``conf/`` is, the resolvers it uses, and the
typed sections' schemas (:mod:`unlearn.schema`). Importing this module sets it all up, once; the
entry points (``python -m unlearn``, ``unlearn.plan``, ``unlearn.perf``) and the tests import it."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from unlearn.labels import register_resolvers as register_label_resolvers
from unlearn.schema import SECTIONS
from unlearn.sweepnames import job_dirname, safe_name

__all__ = ["conf_dir", "safe_name", "sweep_group"]


def conf_dir() -> str:
    """The repo's top-level ``conf/`` (source checkouts, editable installs) or the wheel's copy."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "conf", here / "conf"):
        if (cand / "config.yaml").exists():
            return str(cand)
    raise RuntimeError(f"no conf/config.yaml next to {here}")


def sweep_group(sweep_dir: str) -> str:
    """The W&B group of a sweep: its folder below ``multirun/`` (``2026-11-22_08-13-25``, ``rate_grid``)."""
    parts = Path(sweep_dir).parts
    tail = parts[parts.index("multirun") + 1 :] if "multirun" in parts else parts[-1:]
    return safe_name("_".join(tail) or "sweep")


def register() -> None:
    """The resolvers ``conf/`` uses and the ``schema/<section>`` entries its defaults list names."""
    if not OmegaConf.has_resolver("safe"):
        OmegaConf.register_new_resolver("safe", safe_name)
    if not OmegaConf.has_resolver("job_dirname"):
        OmegaConf.register_new_resolver("job_dirname", job_dirname)
    register_label_resolvers()  # run_label, job_folder: the folder names (unlearn/labels.py)
    store = ConfigStore.instance()
    for name, schema, package in SECTIONS:
        store.store(group="schema", name=name, node=schema, package=package)


register()
