"""Loggers: W&B through Lightning (offline unless asked), plus a local metrics file that is always
written, because offline W&B cannot read its own logs back and tests and reports need them."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class JsonlLogger(Logger):
    """Appends ``{"step": n, "phase": ..., "time": unix_seconds, metric: value, ...}`` lines to
    ``metrics.jsonl``; ``time`` is the wall clock when the row was logged, so slow steps show."""

    def __init__(self, path: str | Path, phase: str = "unlearn", start_step: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.phase = phase
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self._truncate(start_step)

    def _truncate(self, start_step: int) -> None:
        """This phase logs its steps from ``start_step`` on (0: a fresh start): drop its rows from
        there on, which an earlier, interrupted attempt wrote (a resumed one may have logged past
        its last checkpoint), so every step appears once. Rewritten atomically."""
        keep = [
            r
            for r in read_metrics(self.path)
            if r.get("phase") != self.phase or (isinstance(r.get("step"), int) and r["step"] < start_step)
        ]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
        os.replace(tmp, self.path)

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return self.phase

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None  # the composed config is saved in the run directory already

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row: dict[str, Any] = {"step": step, "phase": self.phase, "time": round(time.time(), 3)}
        for k, v in metrics.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics file. A last line that does not parse is a row that a killed process
    left half-written (rows are appended): it is dropped, so that the run can resume (the
    resumed attempt logs that step again). A bad line before the last is damage, and an error."""
    p = Path(path)
    if not p.exists():
        return []
    lines = [(i, line) for i, line in enumerate(p.read_text().splitlines(), 1) if line.strip()]
    rows = []
    for k, (i, line) in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if k == len(lines) - 1:
                break
            raise ValueError(f"{p}: line {i} is not a JSON row ({e}); only the last line may be torn") from e
    return rows


def wandb_logger(
    settings: Mapping[str, Any],
    save_dir: Path,
    name: str,
    group: str | None,
    tags: list[str],
    run_id: str | None = None,
) -> Logger:
    """A Lightning ``WandbLogger``; ``mode: offline`` (default) never prompts for a login. With
    ``run_id`` (a resumed job's) W&B continues that run (``resume="allow"``)."""
    from lightning.pytorch.loggers import WandbLogger

    opts = dict(settings)
    mode = opts.pop("mode", "offline")
    if mode not in ("offline", "online", "disabled"):
        raise ValueError(f"logger.wandb.mode must be offline, online or disabled, got {mode!r}")
    os.environ.setdefault("WANDB_SILENT", "true")
    if mode == "offline":
        os.environ["WANDB_MODE"] = "offline"
    resume: dict[str, Any] = {"id": run_id, "resume": "allow"} if run_id and "id" not in opts else {}
    return WandbLogger(
        project=opts.pop("project", "unlearn"),
        entity=opts.pop("entity", None),
        name=opts.pop("name", None) or name,
        group=opts.pop("group", None) or group,
        tags=list(opts.pop("tags", None) or []) + tags,
        save_dir=str(save_dir),
        mode=mode,
        **resume,
        **opts,
    )
