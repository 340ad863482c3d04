"""The streaming step (each tensor combined during the forget backward) against the buffered one
it replaces (g_r, g_f and the update as whole lists, the combiner called once on them): the same
parameters and the same logged diagnostics, for every combiner, with and without accumulation;
and its memory: one gradient buffer and one tensor's temporaries beyond a plain GD step."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import pytest
import torch

from unlearn.combiners import SAGO, Combiner, PCGrad, PCGradGlobal, PCGradSymmetric, Sum
from unlearn.combiners.base import Combination
from unlearn.config import ConfigError
from unlearn.data.format import PromptFormat, encode_rows
from unlearn.data.paired import PairedStream
from unlearn.losses import GA, NLL, Objective
from unlearn.training.fit import LoopConfig, fit, quiet_lightning, stream_length
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.training.optim import OptimConfig

LOOP = LoopConfig(accelerator="cpu", enable_progress_bar=False)


@dataclass(frozen=True)
class WholeLists(Combiner):
    """``inner``'s rule called on whole lists (the pre-streaming path): the step must buffer g_r,
    g_f and the update. ``select`` is applied by the base class's whole-list code, as before."""

    inner: Combiner = field(default_factory=Sum)

    def _combine(self, g_r, g_f, ref):
        reference = None if all(s is r for s, r in zip(ref, g_r, strict=True)) else ref
        res = self.inner.combine(g_r, g_f, reference=reference)
        return Combination(res.update, res.stats)


def whole_lists(c: Combiner) -> WholeLists:
    inner = type(c)(**{**c.__dict__, "select": None})
    return WholeLists(alpha=c.alpha, gamma=c.gamma, select=c.select, inner=inner)


class Recording(UnlearnModule):
    """Keeps every step's logged gradient statistics."""

    def _log_step(self, stats):
        self.logged = getattr(self, "logged", []) + [{k: v.detach().clone() for k, v in stats.items()}]
        super()._log_step(stats)


# gamma != alpha: on a random-init model g_forget ≈ -g_retain and Adam would amplify the rounding
# noise of their near-cancelling sum (see tests/test_training.py)
CASES = {
    "sum": (Sum(alpha=1.0, gamma=0.5), None),
    "pcgrad": (PCGrad(gamma=0.5), None),
    "pcgrad_global": (PCGradGlobal(gamma=0.5), None),
    "pcgrad_symmetric": (PCGradSymmetric(gamma=0.5), None),
    "sago": (SAGO(gamma=0.5), None),
    "sago_prefer_retain": (SAGO(gamma=0.5, prefer_retain=True), None),
    "sago_soft": (SAGO(gamma=0.5, gate="soft"), None),
    "sago_soft_raw": (SAGO(gamma=0.5, gate="soft_raw", kappa=1e4), None),
    "pcgrad_select": (PCGrad(gamma=0.5, select=r"mlp|embed"), None),
    "sago_select": (SAGO(gamma=0.5, select=r"self_attn"), None),
    "pcgrad_global_select": (PCGradGlobal(gamma=0.5, select=r"mlp"), None),
    "pcgrad_retain_ema": (PCGrad(gamma=0.5), 0.5),
    "pcgrad_global_retain_ema": (PCGradGlobal(gamma=0.5), 0.5),
    "sago_retain_ema": (SAGO(gamma=0.5), 0.5),
}


def _stream(tok, splits, steps, batch, accumulate):
    fmt = PromptFormat()
    f, r = (encode_rows(tok, fmt, splits[k], 64) for k in ("forget", "retain"))
    return PairedStream(f, r, stream_length(steps, accumulate, batch), seed=0)


def _train(model, tok, splits, combiner, ema, accumulate, steps=3, batch=4, diagnostics=True):
    module = Recording(
        copy.deepcopy(model),
        Objective(forget=GA(), retain=NLL()),
        combiner,
        OptimConfig(lr=1e-3, warmup_ratio=0.0, schedule="constant"),
        StepConfig(accumulate=accumulate, retain_ema=ema, clip_norm=1.0, diagnostics=diagnostics),
    )
    fit(module, _stream(tok, splits, steps, batch, accumulate), tok.pad_token_id, batch, steps, LOOP)
    return module


# diagnostics off: the step writes each update into g_r's own tensor instead of a new one
@pytest.mark.parametrize("diagnostics", [True, False], ids=["diagnostics", "no_diagnostics"])
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_tensorwise_step_equals_the_whole_list_step(tiny, toy_splits, name, accumulate, diagnostics):
    quiet_lightning()
    model, tok = tiny
    combiner, ema = CASES[name]
    new = _train(model, tok, toy_splits, combiner, ema, accumulate, diagnostics=diagnostics)
    assert new.streaming() is (accumulate == 1 and combiner.streams)
    old = _train(model, tok, toy_splits, whole_lists(combiner), ema, accumulate, diagnostics=diagnostics)
    assert not old.streaming() and new.steps_done == old.steps_done == 3
    start = dict(model.named_parameters())
    a, b = dict(new.model.named_parameters()), dict(old.model.named_parameters())
    assert any(not torch.equal(start[n], a[n]) for n in a), "training did not move the parameters"
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6, msg=f"{n} differs")
    assert len(new.logged) == len(old.logged) == 3
    for s_new, s_old in zip(new.logged, old.logged, strict=True):
        assert s_new.keys() == s_old.keys()
        for k in s_new:
            torch.testing.assert_close(s_new[k].float(), s_old[k].float(), rtol=1e-4, atol=1e-6, msg=k)


def test_a_whole_list_combiner_still_trains_buffered(tiny, toy_splits):
    """A user combiner that implements only _combine (docs/extending.md, "A combiner") takes the
    buffered path, and train.stream=true refuses it before training."""
    model, tok = tiny
    c = whole_lists(Sum(gamma=0.5))
    assert not c.per_tensor and not c.streams
    assert not _train(model, tok, toy_splits, c, None, 1, steps=1).streaming()
    with pytest.raises(
        ConfigError, match=r"train\.stream=true cannot stream combiner WholeLists.*set train\.stream=null"
    ):
        UnlearnModule(model, Objective(forget=GA(), retain=NLL()), c, step=StepConfig(stream=True))
    with pytest.raises(ConfigError, match=r"train\.stream=true cannot stream combiner PCGradGlobal"):
        UnlearnModule(model, Objective(forget=GA(), retain=NLL()), PCGradGlobal(), step=StepConfig(stream=True))


def test_the_hooks_live_only_inside_the_step(tiny, toy_splits):
    """After training (evaluation, fine-tuning with one task) a backward pass fills .grad as usual."""
    model, tok = tiny
    module = _train(model, tok, toy_splits, SAGO(), None, 1, steps=1)
    m = module.model
    assert all(p.grad is None for p in m.parameters())
    batch = {
        "input_ids": torch.tensor([[1, 2, 3, 4]]),
        "attention_mask": torch.ones(1, 4, dtype=torch.long),
        "labels": torch.tensor([[1, 2, 3, 4]]),
    }
    NLL()(m, batch).mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)


def test_a_diverged_loss_stops_before_the_forget_backward(tiny, toy_splits, monkeypatch):
    """The losses are guarded before the streaming step runs the forget backward, which writes
    .grad: nothing is combined and no optimizer step runs."""
    from unlearn.training.gradients import TaskGradients

    model, tok = tiny
    calls = []
    original = TaskGradients.backward
    monkeypatch.setattr(
        TaskGradients,
        "backward",
        lambda self, loss, sink, once=False: calls.append(once) or original(self, loss, sink, once),
    )
    step = StepConfig(stream=True)
    step.guard.max_abs_loss = 1e-3
    m = copy.deepcopy(model)
    module = UnlearnModule(
        m, Objective(forget=GA(), retain=NLL()), SAGO(), OptimConfig(lr=1e-3, warmup_ratio=0.0), step
    )
    fit(module, _stream(tok, toy_splits, 2, 4, 1), tok.pad_token_id, 4, 2, LOOP)
    assert module.diverged and "train/loss" in step.guard.reason and module.global_step == 0
    assert calls == [False], "only the retain backward ran"
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), model.parameters(), strict=True))


def test_a_non_finite_update_never_reaches_the_optimizer(tiny, toy_splits):
    """The update norm is checked after combining, before clipping and the optimizer step."""

    @dataclass(frozen=True)
    class Poison(Sum):
        def _tensor(self, r, f, s, totals):
            u, stats = super()._tensor(r, f, s, totals)
            return u * float("nan"), stats

    model, tok = tiny
    m = copy.deepcopy(model)
    step = StepConfig()
    module = UnlearnModule(
        m, Objective(forget=GA(), retain=NLL()), Poison(), OptimConfig(lr=1e-3, warmup_ratio=0.0), step
    )
    fit(module, _stream(tok, toy_splits, 2, 4, 1), tok.pad_token_id, 4, 2, LOOP)
    assert module.streaming() and module.diverged and "norm_update=nan" in step.guard.reason
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), model.parameters(), strict=True))
    assert all(p.grad is None for p in m.parameters())


def test_frozen_parameters_get_no_hook_and_stay_put(tiny, toy_splits):
    model, tok = tiny
    m = copy.deepcopy(model)
    m.model.embed_tokens.weight.requires_grad_(False)
    module = UnlearnModule(
        m, Objective(forget=GA(), retain=NLL()), PCGrad(gamma=0.5), OptimConfig(lr=1e-3, warmup_ratio=0.0)
    )
    fit(module, _stream(tok, toy_splits, 2, 4, 1), tok.pad_token_id, 4, 2, LOOP)
    assert module.streaming() and "model.embed_tokens.weight" not in module.grads.names
    assert torch.equal(m.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert not torch.equal(m.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["train.stream=true", "train.accumulate=4"],
            r"train\.stream=true combines .* train\.accumulate=4: set train\.stream=null .* or train\.accumulate=1",
        ),
        (["train.stream=true", "combiner=pcgrad_global"], r"train\.stream=true cannot stream combiner PCGradGlobal"),
        (
            ["train.stream=true", "trainer=ddp", "trainer.devices=2"],
            r"train\.stream=true needs one device, but this run has 2 processes.*set train\.stream=null",
        ),
    ],
)
def test_bad_stream_settings_stop_before_any_model_is_built(tmp_path, no_model_build, overrides, message):
    from conftest import job_config

    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    with pytest.raises(ConfigError, match=message):
        build_job(job_config([*overrides, f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run"))


# -- memory ---------------------------------------------------------------------------------------
def _peaks(model, stream_mode):
    from unlearn.perf.combiners import PLAIN, build_combiner, schedule, synthetic_stream, time_steps

    built = {c: build_combiner(c) for c in ("sum", "pcgrad", "sago")}
    plan = schedule([PLAIN, *built], warmup=1, repeats=0)
    stream = synthetic_stream(model.config.vocab_size, 1, 16, len(plan))
    return time_steps(model, built, stream, 1, plan, torch.device("cpu"), StepConfig(stream=stream_mode)).peaks


def test_a_streaming_step_holds_one_gradient_buffer_like_plain_gd():
    """Batch 1×16, where gradients dominate: sum, pcgrad and sago peak at most about one tensor
    (the largest, 0.09 of all here) above a plain ``(L_f + L_r).backward()`` step; buffered, they
    peak ~0.45 buffers above it (which guards this test's power to fail)."""
    from unlearn.models.tiny import TinyLlama

    quiet_lightning()
    model, _ = TinyLlama(
        hidden_size=32, num_layers=4, num_heads=2, intermediate_size=1024
    ).load()  # no tensor dominates
    params = [p for p in model.parameters() if p.requires_grad]
    buffer = sum(p.numel() * p.element_size() for p in params)
    largest = max(p.numel() * p.element_size() for p in params)
    streaming = _peaks(copy.deepcopy(model), None)
    buffered = _peaks(copy.deepcopy(model), False)
    for c in ("sum", "pcgrad", "sago"):
        extra = streaming[c] - streaming["plain"]
        assert extra <= 1.5 * largest, (
            f"{c}: {extra / buffer:+.2f} buffers over plain (largest tensor {largest / buffer:.2f})"
        )
        assert buffered[c] - buffered["plain"] >= 0.3 * buffer, (
            f"{c} buffered: {(buffered[c] - buffered['plain']) / buffer:+.2f}"
        )
