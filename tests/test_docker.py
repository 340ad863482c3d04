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
    assert "/cache" in DOCKERFILE and "HF_HOME=/cache" in DOCKERFILE and "WANDB_DIR=/cache" in DOCKERFILE
    assert "UNLEARN_CACHE=/cache" in DOCKERFILE
