"""Every method preset with every combiner, through the real unlearning phase: a few steps on the
tiny model (first taught the toy facts) must lower the method's own forget loss, raise the forget
NLL (all but RMU, whose loss acts on hidden states), and move only trainable weights."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CONF, batch_of, job_config

from unlearn import phases
from unlearn.data.format import PromptFormat, encode_rows
from unlearn.data.paired import PairedStream
from unlearn.job import build_job
from unlearn.loggers import JsonlLogger, read_metrics
from unlearn.losses import NLL, Objective
from unlearn.rundir import RunDir
from unlearn.training.fit import LoopConfig, fit, quiet_lightning
from unlearn.training.module import UnlearnModule
from unlearn.training.optim import OptimConfig

METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
COMBINERS = ["sum", "pcgrad", "sago"]
STEPS = 4
# the tiny test model has 2 layers; the rmu preset's layers are for the 4-layer default model
FOR_TWO_LAYERS = {"rmu": ["forget.layer=1", "forget.update_layers=[0,1]"]}


@pytest.fixture(scope="module")
def known(tiny, toy_splits):
    """The tiny test model fine-tuned on the forget and retain rows, so it has something to forget."""
    quiet_lightning()
    model, tok = tiny
    m = copy.deepcopy(model)
    enc = encode_rows(tok, PromptFormat(), toy_splits["forget"] + toy_splits["retain"], 64)
    fit(
        UnlearnModule(m, Objective(None, NLL()), optim=OptimConfig(lr=1e-2, warmup_ratio=0.0, schedule="constant")),
        PairedStream(None, enc, 80 * 16, seed=0),
        tok.pad_token_id,
        16,
        80,
        LoopConfig(accelerator="cpu", enable_progress_bar=False),
    )
    return m, tok


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("methods-cache")  # retrieval embeddings, computed once


def forget_nll(model, tok, rows) -> float:
    with torch.no_grad():
        return float(NLL()(model, batch_of(tok, rows)).mean())


def test_the_presets_are_the_documented_set():
    assert set(METHODS) >= {"ga", "gd", "npo", "simnpo", "rmu", "sga", "pcgrad", "sago"}


@pytest.mark.parametrize("combiner", COMBINERS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_preset_unlearns_with_every_combiner(known, toy_splits, shared_cache, tmp_path, method, combiner):
    model, tok = known
    overrides = [
        f"method={method}",
        f"combiner={combiner}",
        f"train.steps={STEPS}",
        "train.batch_size=4",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger=none",
        f"paths.cache_dir={shared_cache}",
        *FOR_TWO_LAYERS.get(method, []),
    ]
    s = build_job(job_config(overrides), RunDir(tmp_path / "run"))
    assert type(s.combiner).__name__.lower().startswith(combiner.replace("_", ""))
    m = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    module = phases.unlearn(s, m, tok, toy_splits, loggers=[JsonlLogger(tmp_path / "m.jsonl")])
    assert module.global_step == STEPS and not module.diverged
    fb = batch_of(tok, toy_splits["forget"])
    with torch.no_grad():  # the component, prepared during unlearning, scored on the start and end models
        start, end = float(s.objective.forget(model, fb).mean()), float(s.objective.forget(m, fb).mean())
    assert end < start, f"{method}: the forget loss should go down ({start:.4f} -> {end:.4f})"
    if method != "rmu":
        assert forget_nll(m, tok, toy_splits["forget"]) > forget_nll(model, tok, toy_splits["forget"]) + 0.01, (
            "the forget answers should become less likely"
        )
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert set(module.grads.names) == trainable  # the gradient buffers and the optimizer hold just these
    assert {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]} == {
        id(p) for p in m.parameters() if p.requires_grad
    }
    changed = {n for n, p in m.named_parameters() if not torch.equal(before[n], p)}
    assert changed and changed <= trainable, "frozen parameters must not move"
    rows = [r for r in read_metrics(tmp_path / "m.jsonl") if "train/loss/forget" in r]
    assert len(rows) == STEPS and all(torch.isfinite(torch.tensor(r["train/loss/forget"])) for r in rows)
