"""The run directory: composed config, provenance and results, all written atomically as JSON.

``results.json`` is a flat map of metric name to number plus ``status`` ("running", "ok",
"collapsed" (finished, but the unlearned model is destroyed: see unlearn/eval/collapse.py),
"diverged", "failed", "interrupted" by Ctrl-C) and ``reason``. It is rewritten after every phase, so an interrupted run
keeps what it had computed.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

STATUSES = ("running", "ok", "collapsed", "diverged", "failed", "interrupted")
PACKAGES = (
    "unlearn",
    "torch",
    "transformers",
    "lightning",
    "hydra-core",
    "omegaconf",
    "peft",
    "datasets",
    "wandb",
    "tokenizers",
)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)  # JSON has no NaN/inf; keep them readable ("nan", "inf", "-inf")
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return _jsonable(x.item())
    return x


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(data), f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _restore(x: Any) -> Any:
    if isinstance(x, str) and x in _NONFINITE:
        return _NONFINITE[x]
    if isinstance(x, dict):
        return {k: _restore(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_restore(v) for v in x]
    return x


def read_json(path: Path) -> Any:
    """Read JSON written by :func:`write_json` (non-finite numbers come back as floats)."""
    return _restore(json.loads(Path(path).read_text()))


def git_state(where: Path) -> dict[str, Any]:
    """Commit and dirty flag of the git checkout that holds ``where``; outside a checkout, the
    commit an image was built from (``UNLEARN_GIT_COMMIT``, set by docker/Dockerfile) or null."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": os.environ.get("UNLEARN_GIT_COMMIT") or None, "dirty": None}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info.update(cuda=True, gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count())
    else:
        info["cuda"] = False
    return info


class RunDir:
    """One job's output folder (Hydra's ``runtime.output_dir``).

    ``writes=False``: a non-zero rank of a launched job (``torchrun``/``srun``), which reads the
    folder (its checkpoints) but leaves every file to rank 0; results are kept in memory only.
    """

    def __init__(self, path: str | Path, writes: bool = True) -> None:
        self.path = Path(path)
        self.writes = writes
        if writes:
            self.path.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {}
        self.started = time.time()

    def file(self, name: str) -> Path:
        return self.path / name

    def write_provenance(self, seed: int, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        prov = {
            "seed": seed,
            "git": git_state(Path(__file__).resolve().parent),
            "versions": versions(),
            "device": device_info(),
            "host": socket.gethostname(),
            "argv": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            **(extra or {}),
        }
        if self.writes:
            write_json(self.file("provenance.json"), prov)
        return prov

    def update(self, values: Mapping[str, Any] | None = None, **fields: Any) -> None:
        """Merge ``values``/``fields`` into ``results.json`` and rewrite it atomically."""
        self.results.update(values or {})
        self.results.update(fields)
        self.results["time/elapsed_s"] = round(time.time() - self.started, 2)
        if self.writes:
            write_json(self.file("results.json"), self.results)

    def status(self, status: str, reason: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        self.update(status=status, reason=reason)
