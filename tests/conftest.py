"""Shared fixtures: the tiny model, the toy benchmark, config composition, an isolated cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if not any(k.startswith("MALLOC_") for k in os.environ):  # as `python -m unlearn` runs: see unlearn.utils.malloc
    from unlearn.utils.malloc import keep_freed_memory

    keep_freed_memory()


@pytest.fixture(scope="session")
def tiny():
    """A fresh (untrained) tiny model and its tokenizer; tests that mutate it take a deepcopy."""
    from unlearn.models.tiny import TinyLlama

    return TinyLlama(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64).load()


@pytest.fixture(scope="session")
def toy_splits():
    from unlearn.benchmarks.toy import ToyBenchmarkData

    return ToyBenchmarkData(n_people=10, n_holdout=2, forget_fraction=0.2).build()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One model/eval cache for the whole session, so target and oracle are fine-tuned once."""
    return tmp_path_factory.mktemp("unlearn-cache")


def compose(overrides: Sequence[str] = (), name: str = "config") -> Any:
    """The composed config, as `python -m unlearn <overrides>` would see it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import unlearn.hydra_setup  # noqa: F401  (registers the resolvers and the typed sections' schemas)

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return hydra_compose(name, overrides=list(overrides), return_hydra_config=True)


def job_config(overrides: Sequence[str] = ()) -> Any:
    """The config a job function receives: composed, without the ``hydra`` node."""
    from omegaconf import open_dict

    cfg = compose(overrides)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_cli(args: Sequence[str], cwd: Path, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `python -m unlearn ARGS` in ``cwd`` with an isolated cache and offline W&B."""
    env = {**os.environ, "UNLEARN_CACHE": str(cache), "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "unlearn", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def batch_of(tokenizer, rows, fmt=None, max_length: int = 64) -> dict[str, Any]:
    from unlearn.data.collate import collate
    from unlearn.data.format import PromptFormat, encode_rows

    return collate(encode_rows(tokenizer, fmt or PromptFormat(), rows, max_length), tokenizer.pad_token_id)


@pytest.fixture
def no_model_build(monkeypatch):
    """Fails the test if anything tries to build a model."""
    from unlearn.models.tiny import TinyLlama

    def boom(*a, **k):
        raise AssertionError("a model was built before the config was validated")

    monkeypatch.setattr(TinyLlama, "load", boom)


@pytest.fixture
def hub_unreachable(monkeypatch, tmp_path) -> None:
    """The unreachable-hub path on any machine, online or not: ``HF_HUB_OFFLINE=1`` makes
    ``hub_reachable()`` (which reads it per call) false, so the loader puts the Hugging Face
    libraries in offline mode and nothing is downloaded; the caches are empty folders (the libraries
    read their cache paths at import, so the module attributes are patched, not the variables)."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> None:
    """The hub path of a loader with no cached copy to fall back on; skipped where the hub answers.
    (`datasets` reads HF_DATASETS_CACHE at import, so the module attribute is patched.)"""
    from unlearn.benchmarks.hub import hub_reachable

    if hub_reachable():
        pytest.skip("the hub is reachable here: this checks the offline path")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(0)
