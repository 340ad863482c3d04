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


def test_a_row_torn_by_a_kill_does_not_block_the_resume(tmp_path):
    """A killed process can leave its last appended row half-written: the resume drops it and logs
    that step again (it used to fail with a JSONDecodeError at every rerun). Damage before the
    last line is still an error."""
    import pytest

    path = tmp_path / "metrics.jsonl"
    _log(path, range(4))
    with path.open("a") as f:
        f.write('{"step": 4, "phase": "unlearn", "time": 17')
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3]
    _log(path, range(2, 6), start_step=2)
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 3, 4, 5]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "{torn", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2 is not a JSON row"):
        read_metrics(path)
