"""The Dockerfile can only be built where a Docker engine runs (not in CI); check what it relies on."""

from __future__ import annotations

import re

import tomllib
from conftest import REPO

DOCKERFILE = (REPO / "docker" / "Dockerfile").read_text()


def test_every_copied_path_exists():
    sources = [src for line in DOCKERFILE.splitlines() if line.startswith("COPY") for src in line.split()[1:-1]]
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such path in the repo"


def test_installed_extras_exist():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for group in re.findall(r'pip install -e "\.\[([^\]]+)\]"', DOCKERFILE):
        for extra in group.split(","):
            assert extra in extras, f"extra {extra!r} is not defined in pyproject.toml"


def test_volumes_and_entrypoint():
    assert 'ENTRYPOINT ["python", "-m", "unlearn"]' in DOCKERFILE
    assert "/cache" in DOCKERFILE and "HF_HOME=/cache" in DOCKERFILE and "WANDB_CACHE_DIR=/cache" in DOCKERFILE
    assert "UNLEARN_CACHE=/cache" in DOCKERFILE
    # the run directories hold the W&B run files (WandbLogger's save_dir), so WANDB_DIR would mislead
    assert "WANDB_DIR=" not in DOCKERFILE


def test_the_image_records_the_commit_it_was_built_from(tmp_path, monkeypatch):
    from unlearn.rundir import git_state

    assert "ENV UNLEARN_GIT_COMMIT=${GIT_COMMIT}" in DOCKERFILE
    monkeypatch.setenv("UNLEARN_GIT_COMMIT", "abc123")
    assert git_state(tmp_path) == {"commit": "abc123", "dirty": None}  # no checkout: the build's commit
    monkeypatch.delenv("UNLEARN_GIT_COMMIT")
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
