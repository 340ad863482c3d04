"""Cache keys change with everything that changes the cached entry: a fine-tuned model with its
effective recipe (``train.max_length`` fallback, precision), a target's evaluation with the oracle."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import job_config

from unlearn.cache import digest
from unlearn.evaluator import EvalContext
from unlearn.job import Job, build_job
from unlearn.phases import ModelRef, cached_evaluation, evaluation_key, reference_model
from unlearn.rundir import RunDir


@pytest.fixture
def no_model_build(monkeypatch):
    """Fails the test if anything tries to build (let alone fine-tune) a model."""
    from unlearn.models.tiny import TinyLlama

    def boom(*a, **k):
        raise AssertionError("a model was built")

    monkeypatch.setattr(TinyLlama, "load", boom)


class HitCache:
    """A model cache that has every entry: reference_model computes its key and builds nothing."""

    def __init__(self, root: Path) -> None:
        self.root, self.keys = root, []

    def directory(self, kind: str, key: Any, build: Any, label: str | None = None) -> tuple[Path, bool]:
        self.keys.append(key)
        return self.root, True


def _setup(tmp_path: Path, *overrides: str) -> Job:
    cfg = job_config([f"paths.cache_dir={tmp_path / 'cache'}", "logger=none", *overrides])
    return build_job(cfg, RunDir(tmp_path / "run"))


def _target_key(tmp_path: Path, splits: Any, *overrides: str) -> Any:
    s = dataclasses.replace(_setup(tmp_path, *overrides), cache=HitCache(tmp_path))
    ref = reference_model(s, splits, "target")
    assert ref is not None and len(s.cache.keys) == 1  # the toy target is fine-tuned (from the cache)
    return ref.key


def test_fine_tuned_model_key_follows_the_effective_max_length(tmp_path, toy_splits, no_model_build):
    base = _target_key(tmp_path, toy_splits)
    assert _target_key(tmp_path, toy_splits) == base
    # toy's recipe has no max_length: fine-tuning uses train.max_length (256 by default)
    assert _target_key(tmp_path, toy_splits, "train.max_length=128") != base
    assert _target_key(tmp_path, toy_splits, "+benchmark.finetune.max_length=256") == base
    # with its own max_length, the recipe no longer depends on train.max_length
    assert _target_key(tmp_path, toy_splits, "+benchmark.finetune.max_length=256", "train.max_length=128") == base


def test_fine_tuned_model_key_follows_the_trainer_precision(tmp_path, toy_splits, no_model_build):
    assert _target_key(tmp_path, toy_splits, "trainer.precision=bf16-mixed") != _target_key(tmp_path, toy_splits)


ORACLE = {"metrics": {"mia_auc": 0.5}, "arrays": {"forget_truth_ratio": [0.1, 0.2]}}
OTHER_ARRAYS = {"metrics": {"mia_auc": 0.5}, "arrays": {"forget_truth_ratio": [0.1, 0.3]}}
OTHER_METRICS = {"metrics": {"mia_auc": 0.6}, "arrays": {"forget_truth_ratio": [0.1, 0.2]}}
SPLITS = {"forget": [{"question": "q", "answer": "a"}]}


def test_evaluation_key_follows_the_oracle_record(tmp_path, no_model_build):
    s = _setup(tmp_path)
    ref = ModelRef({"base": "stub"}, None)

    def key(oracle: Any) -> str:
        return digest(evaluation_key(s, ref, SPLITS, oracle))

    assert key(ORACLE) == key(copy.deepcopy(ORACLE))
    assert len({key(None), key(ORACLE), key(OTHER_ARRAYS), key(OTHER_METRICS)}) == 4


def test_evaluation_key_follows_the_dtype_the_model_is_evaluated_in(tmp_path, no_model_build):
    """A base or given-path target evaluated in fp32 (auto on a CPU) is another entry than in bf16
    (auto on a GPU): a shared cache handed one's numbers to the other."""
    ref = ModelRef({"base": "stub"}, None)
    fp32 = digest(evaluation_key(_setup(tmp_path), ref, SPLITS))
    bf16 = digest(evaluation_key(_setup(tmp_path, "model.dtype=bf16"), ref, SPLITS))
    assert fp32 != bf16
    assert fp32 == digest(evaluation_key(_setup(tmp_path, "model.dtype=fp32"), ref, SPLITS))  # auto on this CPU


class CountingEvaluator:
    reports_diverged = False

    def __init__(self) -> None:
        self.calls = 0

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        self.calls += 1
        fq = None if ctx.oracle is None else sum(ctx.oracle["arrays"]["forget_truth_ratio"])
        return {"metrics": {"forget_quality": fq}, "arrays": {}}


class StubRef(ModelRef):
    def load(self, s: Job) -> tuple[Any, Any]:
        return torch.nn.Linear(1, 1), None


def test_a_changed_oracle_is_not_served_a_stale_target_evaluation(tmp_path, no_model_build):
    evaluator = CountingEvaluator()
    s = dataclasses.replace(_setup(tmp_path), evaluator=evaluator)
    ref = StubRef({"base": "stub"}, None)
    first = cached_evaluation(s, ref, SPLITS, "target", ORACLE)
    again = cached_evaluation(s, ref, SPLITS, "target", copy.deepcopy(ORACLE))
    other = cached_evaluation(s, ref, SPLITS, "target", OTHER_ARRAYS)
    assert evaluator.calls == 2  # the same oracle is a hit; another oracle is evaluated afresh
    assert again == first
    assert other["metrics"]["forget_quality"] == pytest.approx(0.4) != first["metrics"]["forget_quality"]
