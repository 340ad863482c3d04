"""A run that would train on no labelled token (every gradient zero) stops before training and
says which setting to raise, instead of reporting an unchanged model as ``ok``."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

# no cached models needed: the untrained tiny model is the target, and there is no oracle
BASE = ["experiment=smoke", "benchmark.oracle=null", "hydra.run.dir=run"]


@pytest.mark.parametrize(
    "args, key",
    [
        (["benchmark.target.finetune_on=null", "train.max_length=1"], "train.max_length=1"),
        (["task=finetune", "train.max_length=1"], "train.max_length=1"),  # the recipe falls back to it
        (["task=finetune", "+benchmark.finetune.max_length=1"], "benchmark.finetune.max_length=1"),
    ],
    ids=["unlearn", "finetune", "finetune-own-max-length"],
)
def test_no_answer_token_within_max_length_stops_before_training(tmp_path, cache_dir, args, key):
    proc = run_cli([*BASE, *args], cwd=tmp_path, cache=cache_dir)
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert key in err and "shortest prompt is" in err and "Traceback" not in err, err[-2000:]
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["status"] == "failed" and key in res["reason"]
    assert "train/steps_done" not in res
