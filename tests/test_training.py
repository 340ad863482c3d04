"""The manual-optimisation step against references: the summed loss under automatic optimisation,
one large batch against accumulated micro-batches, and a smoke run of the tiny model."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch

from unlearn.combiners import SAGO, Sum
from unlearn.data.format import PromptFormat, encode_rows
from unlearn.data.paired import PairedCollate, PairedStream
from unlearn.losses import GA, NLL, Objective
from unlearn.training.fit import LoopConfig, fit, quiet_lightning, stream_length
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.training.optim import OptimConfig, build_optimizer

LOOP = LoopConfig(accelerator="cpu", enable_progress_bar=False)


def _stream(tok, splits, steps, batch, accumulate=1):
    fmt = PromptFormat()
    f = encode_rows(tok, fmt, splits["forget"], 64)
    r = encode_rows(tok, fmt, splits["retain"], 64)
    return PairedStream(f, r, stream_length(steps, accumulate, batch), seed=0)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class SummedLoss(L.LightningModule):
    """Reference: automatic optimisation of L_f + L_r with Lightning's own clipping."""

    def __init__(self, model, objective, optim, steps):
        super().__init__()
        self.model, self.objective, self.optim, self.steps = model, objective, optim, steps

    def training_step(self, batch, idx):
        return self.objective.forget_loss(self.model, batch) + self.objective.retain_loss(self.model, batch)

    def configure_optimizers(self):
        return build_optimizer([p for p in self.model.parameters() if p.requires_grad], self.optim, self.steps)


def test_sum_combiner_equals_automatic_optimisation_of_the_summed_loss(tiny, toy_splits):
    quiet_lightning()
    model, tok = tiny
    steps, batch = 4, 4
    optim = OptimConfig(lr=1e-3, schedule="linear", warmup_ratio=0.25)
    objective = Objective(forget=GA(), retain=NLL())

    manual = copy.deepcopy(model)
    fit(
        UnlearnModule(manual, objective, Sum(alpha=1.0, gamma=1.0), optim, StepConfig(clip_norm=1.0)),
        _stream(tok, toy_splits, steps, batch),
        tok.pad_token_id,
        batch,
        steps,
        LOOP,
    )

    auto = copy.deepcopy(model)
    loader = torch.utils.data.DataLoader(
        _stream(tok, toy_splits, steps, batch), batch_size=batch, collate_fn=PairedCollate(tok.pad_token_id)
    )
    L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        gradient_clip_algorithm="norm",
    ).fit(SummedLoss(auto, objective, optim, steps), loader)

    start, a, b = _params(model), _params(manual), _params(auto)
    assert any(not torch.equal(start[n], a[n]) for n in a), "training did not move the parameters"
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-5, atol=1e-6, msg=f"{n} differs")


# gamma != alpha: on a random-init model g_forget ≈ -g_retain, and Adam would amplify the rounding
# noise of their near-cancelling sum into visible parameter differences.
@pytest.mark.parametrize("combiner", [Sum(alpha=1.0, gamma=0.5), SAGO()], ids=["sum", "sago"])
def test_four_micro_batches_equal_one_batch_four_times_larger(tiny, toy_splits, combiner):
    quiet_lightning()
    model, tok = tiny
    steps = 3
    optim = OptimConfig(lr=1e-3, warmup_ratio=0.0, schedule="constant")
    objective = Objective(forget=GA(), retain=NLL())
    big, small = copy.deepcopy(model), copy.deepcopy(model)
    fit(
        UnlearnModule(big, objective, combiner, optim, StepConfig(accumulate=1)),
        _stream(tok, toy_splits, steps, 8),
        tok.pad_token_id,
        8,
        steps,
        LOOP,
    )
    fit(
        UnlearnModule(small, objective, combiner, optim, StepConfig(accumulate=4)),
        _stream(tok, toy_splits, steps, 2, accumulate=4),
        tok.pad_token_id,
        2,
        steps,
        LOOP,
    )
    a, b = _params(big), _params(small)
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-6)


def test_combining_per_micro_batch_would_differ(tiny, toy_splits):
    """Guards the previous test: with a nonlinear combiner, combining each micro-batch's gradients
    separately (what the spec calls wrong) gives a different update, so that test can fail."""
    model, tok = tiny
    m = copy.deepcopy(model)
    objective = Objective(forget=GA(), retain=NLL())
    collate = PairedCollate(tok.pad_token_id)
    stream = _stream(tok, toy_splits, 1, 8)
    params = [p for p in m.parameters()]

    def grads(batch, task):
        return torch.autograd.grad(objective.loss(task, m, batch), params)

    whole = collate([stream[k] for k in range(8)])
    once = SAGO()(grads(whole, "retain"), grads(whole, "forget"))
    per_micro = [
        SAGO()(
            grads(collate([stream[k] for k in range(i, i + 2)]), "retain"),
            grads(collate([stream[k] for k in range(i, i + 2)]), "forget"),
        )
        for i in range(0, 8, 2)
    ]
    mean_of_combined = [sum(ts) / 4 for ts in zip(*per_micro, strict=True)]
    assert max(float((x - y).abs().max()) for x, y in zip(once, mean_of_combined, strict=True)) > 1e-4


def test_smoke_trainable_parameters_move_frozen_do_not_and_forget_nll_rises(tiny, toy_splits):
    quiet_lightning()
    model, tok = tiny
    m = copy.deepcopy(model)
    m.model.embed_tokens.weight.requires_grad_(False)
    before = _params(m)
    batch = PairedCollate(tok.pad_token_id)([_stream(tok, toy_splits, 1, 8)[k] for k in range(8)])
    with torch.no_grad():
        nll_before = float(NLL()(m, batch["forget"]).mean())
    module = UnlearnModule(
        m, Objective(forget=GA(), retain=None), SAGO(), OptimConfig(lr=1e-2, warmup_ratio=0.0, schedule="constant")
    )
    fit(module, _stream(tok, toy_splits, 5, 8), tok.pad_token_id, 8, 5, LOOP)
    after = _params(m)
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    moved = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(moved) == sum(1 for p in m.parameters() if p.requires_grad)
    with torch.no_grad():
        assert float(NLL()(m, batch["forget"]).mean()) > nll_before + 0.1
    assert module.global_step == 5 and not module.diverged


def test_divergence_stops_training_and_is_recorded(tiny, toy_splits):
    quiet_lightning()
    model, tok = tiny
    m = copy.deepcopy(model)
    step = StepConfig()
    step.guard.max_abs_loss = 1e-3  # any real loss exceeds this: the first step must trip it
    module = UnlearnModule(m, Objective(forget=GA(), retain=NLL()), Sum(), OptimConfig(lr=1e-3, warmup_ratio=0.0), step)
    before = _params(m)
    fit(module, _stream(tok, toy_splits, 5, 4), tok.pad_token_id, 4, 5, LOOP)
    assert module.diverged and "train/loss" in step.guard.reason
    assert module.global_step == 0
    assert all(torch.equal(before[n], p) for n, p in _params(m).items()), "a diverged step must not be applied"


def test_a_single_task_step_logs_that_tasks_gradient_norm(tiny, toy_splits, tmp_path):
    """retain=none (ga, sga): the step logs norm_forget, under the two-task key, beside norm_update."""
    from unlearn.loggers import JsonlLogger, read_metrics

    quiet_lightning()
    model, tok = tiny
    module = UnlearnModule(
        copy.deepcopy(model),
        Objective(forget=GA(), retain=None),
        Sum(gamma=0.5),
        OptimConfig(lr=1e-3, warmup_ratio=0.0, schedule="constant"),
    )
    fit(
        module,
        _stream(tok, toy_splits, 3, 4),
        tok.pad_token_id,
        4,
        3,
        LOOP,
        loggers=[JsonlLogger(tmp_path / "m.jsonl")],
    )
    rows = [r for r in read_metrics(tmp_path / "m.jsonl") if "train/grad/norm_update" in r]
    assert len(rows) == 3
    for r in rows:
        assert "train/grad/norm_retain" not in r
        assert r["train/grad/norm_forget"] > 0
        assert r["train/grad/norm_update"] == pytest.approx(
            0.5 * r["train/grad/norm_forget"], rel=1e-5
        )  # update = gamma * g_f


# -- train.* values are checked before any model is built -----------------------------------------
def _setup(tmp_path, overrides):
    from conftest import job_config

    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    return build_job(job_config([*overrides, f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run"))


BAD_TRAIN = [
    (["train.retain_ema=1.0"], r"train\.retain_ema must be a decay in \[0, 1\) or null, got 1\.0"),
    (["train.retain_ema=-0.1"], r"train\.retain_ema must be a decay in \[0, 1\) or null, got -0\.1"),
    (["train.max_abs_loss=0"], r"train\.max_abs_loss must be a number > 0 .*, got 0"),
    (["train.max_abs_loss=-5"], r"train\.max_abs_loss must be a number > 0 .*, got -5"),
    (
        ["combiner=pcgrad_symmetric", "train.retain_ema=0.9"],
        r"train\.retain_ema=0\.9 has no effect with combiner PCGradSymmetric",
    ),
]


@pytest.mark.parametrize("overrides,message", BAD_TRAIN, ids=[" ".join(o) for o, _ in BAD_TRAIN])
def test_bad_train_values_name_the_key_before_any_model_is_built(tmp_path, no_model_build, overrides, message):
    from unlearn.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        _setup(tmp_path, overrides)


@pytest.mark.parametrize(
    "override,cause",
    [
        ("train.retain_ema=fast", "Value 'fast' of type 'str' could not be converted to Float"),
        ("train.max_abs_loss=big", "Value 'big' of type 'str' could not be converted to Float"),
        ("train.max_abs_loss=null", "field 'train.max_abs_loss' is not Optional"),
    ],
)
def test_train_values_of_the_wrong_type_stop_composition(override, cause):
    """The schema of train (unlearn.schema.TrainConfig) refuses them while Hydra composes, before the validation
    pass."""
    from conftest import compose
    from hydra.errors import HydraException

    with pytest.raises(HydraException) as e:
        compose([override])
    assert cause in str(e.value.__cause__), str(e.value.__cause__)


@pytest.mark.parametrize(
    "overrides,ema,limit",
    [
        (["train.retain_ema=0.9", "train.max_abs_loss=50"], 0.9, 50.0),
        (["train.retain_ema=0", "train.max_abs_loss=inf"], 0.0, float("inf")),
        (["combiner=pcgrad_symmetric"], None, 1e4),
    ],
)
def test_good_train_values_reach_the_step_config(tmp_path, no_model_build, overrides, ema, limit):
    step = _setup(tmp_path, overrides).step
    assert step.retain_ema == ema and step.guard.max_abs_loss == limit


def test_the_module_refuses_an_ema_its_combiner_would_ignore(tiny):
    from unlearn.combiners import PCGradSymmetric
    from unlearn.config import ConfigError

    model, _ = tiny
    with pytest.raises(ConfigError, match=r"train\.retain_ema"):
        UnlearnModule(model, Objective(forget=GA(), retain=NLL()), PCGradSymmetric(), step=StepConfig(retain_ema=0.9))
    UnlearnModule(model, Objective(forget=GA(), retain=NLL()), SAGO(), step=StepConfig(retain_ema=0.9))


@pytest.mark.parametrize("stream", [True, False], ids=["streaming", "buffered"])
def test_the_module_hands_the_combiner_an_ema_of_g_retain(tiny, toy_splits, stream):
    """train.retain_ema: each step's conflict test sees ema <- d*ema + (1-d)*g_r (the first step
    g_r itself), while the update is still built from the raw g_r; also when each tensor is
    combined inside the forget backward (its EMA then updated there, tensor by tensor)."""
    from dataclasses import dataclass

    quiet_lightning()
    model, tok = tiny
    calls = []

    @dataclass(frozen=True)
    class Spy(SAGO):
        def _tensor(self, r, f, s, totals):
            calls.append((r.clone(), s.clone()))
            return super()._tensor(r, f, s, totals)

    decay, steps, batch = 0.5, 3, 4
    m = copy.deepcopy(model)
    n = sum(p.requires_grad for p in m.parameters())
    module = UnlearnModule(
        m,
        Objective(forget=GA(), retain=NLL()),
        Spy(),
        OptimConfig(lr=1e-3, warmup_ratio=0.0),
        StepConfig(retain_ema=decay, stream=stream),
    )
    assert module.streaming() is stream
    fit(module, _stream(tok, toy_splits, steps, batch), tok.pad_token_id, batch, steps, LOOP)
    assert len(calls) == steps * n
    ema = None
    for k in range(steps):  # tensors come in the same order every step (backward order when streaming)
        g_r, ref = zip(*calls[k * n : (k + 1) * n], strict=True)
        ema = (
            [t.clone() for t in g_r]
            if ema is None
            else [decay * e + (1 - decay) * g for e, g in zip(ema, g_r, strict=True)]
        )
        for e, r in zip(ema, ref, strict=True):
            torch.testing.assert_close(r, e)
    assert any(not torch.equal(r, g) for r, g in calls[-n:]), "after step 1 the reference is not g_r"


def test_diagnostics_are_computed_on_the_logged_steps_only(tiny, toy_splits, tmp_path, monkeypatch):
    """trainer.log_every_n_steps=2: the diagnostics (several passes over every gradient) run on
    steps 2 and 4 alone, the ones written to metrics.jsonl, and every logged row has them."""
    from dataclasses import replace

    from unlearn.loggers import JsonlLogger, read_metrics
    from unlearn.training import gradients

    calls = []
    real = gradients.tensor_diagnostics
    monkeypatch.setattr(gradients, "tensor_diagnostics", lambda r, f, u: calls.append(1) or real(r, f, u))
    quiet_lightning()
    model, tok = tiny
    module = UnlearnModule(
        copy.deepcopy(model),
        Objective(forget=GA(), retain=NLL()),
        SAGO(),
        OptimConfig(lr=1e-3, schedule="constant", warmup_ratio=0.0),
    )
    fit(
        module,
        _stream(tok, toy_splits, 4, 4),
        tok.pad_token_id,
        4,
        4,
        replace(LOOP, log_every_n_steps=2),
        loggers=[JsonlLogger(tmp_path / "m.jsonl")],
    )
    rows = [r for r in read_metrics(tmp_path / "m.jsonl") if "train/grad/norm_update" in r]
    assert module.steps_done == 4 and len(rows) == 2
    assert all("train/grad/cos_forget_retain" in r and "train/grad/conflict_frac" in r for r in rows)
    assert len(calls) == 2 * len(module.trainable())


def _lr_factor_before_torch_schedulers(step: int, total: int, schedule: str, warmup_ratio: float) -> float:
    """The hand-written schedule that unlearn/training/optim.py had before it used torch's schedulers."""
    warm = int(round(warmup_ratio * total))
    if warm and step < warm:
        return (step + 1) / warm
    if schedule == "constant" or total <= warm:
        return 1.0
    progress = min(1.0, (step - warm) / max(1, total - warm))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("warmup_ratio", [0.0, 0.05, 0.1, 0.25, 0.9])
@pytest.mark.parametrize("total", [1, 3, 30, 101])
def test_lr_schedules_keep_the_values_of_the_hand_written_ladder(schedule, warmup_ratio, total):
    from unlearn.training.optim import build_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=2e-3)
    sched = build_scheduler(opt, OptimConfig(lr=2e-3, schedule=schedule, warmup_ratio=warmup_ratio), total)
    got = []
    for _ in range(total):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [2e-3 * _lr_factor_before_torch_schedulers(s, total, schedule, warmup_ratio) for s in range(total)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
