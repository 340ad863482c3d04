"""``metrics.jsonl`` holds each step once, with the wall-clock time it was logged."""

from __future__ import annotations

import json
import time

from unlearn.loggers import JsonlLogger, read_metrics


def _log(path, steps, start_step=0, phase="unlearn"):
    lg = JsonlLogger(path, phase=phase, start_step=start_step)
    for s in steps:
        lg.log_metrics({"train/loss/forget": float(s)}, step=s)


def test_a_restart_from_scratch_starts_the_file_afresh(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _log(path, range(4), phase="finetune")  # another phase's rows stay
    _log(path, range(4))
    _log(path, range(4))  # the job restarted from step 0 (no checkpoint, or resume=false)
    assert [r["step"] for r in read_metrics(path) if r["phase"] == "unlearn"] == [0, 1, 2, 3]
    assert [r["step"] for r in read_metrics(path) if r["phase"] == "finetune"] == [0, 1, 2, 3]


def test_a_resume_truncates_the_file_to_the_checkpoint_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _log(path, range(5))  # killed after logging step 4; the last checkpoint was after step 2
    _log(path, range(2, 4), start_step=2)
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3]


def test_each_row_has_a_wall_clock_time(tmp_path):
    path = tmp_path / "metrics.jsonl"
    t0 = time.time()
    _log(path, range(3))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    times = [r["time"] for r in rows]
    assert all(isinstance(t, float) and t0 - 1 <= t <= time.time() + 1 for t in times)
    assert times == sorted(times)
