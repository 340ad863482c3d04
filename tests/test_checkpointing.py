"""model.gradient_checkpointing=true: the same gradients and the same trained weights, recomputed."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch_of, job_config

from unlearn.config import ConfigError
from unlearn.data.format import PromptFormat, encode_rows
from unlearn.losses import GA, KL, NLL, NPO, RMU, RMURetain
from unlearn.losses.context import PrepareContext
from unlearn.losses.objective import Objective
from unlearn.models.checkpointing import checkpointing
from unlearn.models.reference import Reference


@pytest.fixture
def mlp_calls(monkeypatch) -> list[int]:
    """Counts forwards of the Llama MLP blocks; a recomputation in the backward pass shows up as
    extra ones (module hooks are not rerun by the recomputation, so the class's forward is counted)."""
    from transformers.models.llama import modeling_llama

    calls = [0]
    forward = modeling_llama.LlamaMLP.forward

    def counted(self, x):
        calls[0] += 1
        return forward(self, x)

    monkeypatch.setattr(modeling_llama.LlamaMLP, "forward", counted)
    return calls


def _task_grads(
    model, objective, batch, tokenizer, ckpt: bool, calls: list[int], encoded
) -> tuple[dict[str, list[torch.Tensor]], int]:
    model.train()
    ctx = PrepareContext(
        model=model, reference=Reference(model), tokenizer=tokenizer, encoded={"forget": encoded}, batch_size=4
    )  # NPO caches their log-probs
    objective.prepare(ctx)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move off the reference, or the retain gradients of KL and RMU are zero
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
    calls[0] = 0
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    with checkpointing(model, ckpt):
        for task in objective.tasks:
            loss = objective.loss(task, model, batch)
            out[task] = [
                g if g is not None else torch.zeros_like(p)
                for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params, strict=True)
            ]
    return out, calls[0]


def _objective(kind: str):
    if kind == "ga_nll":
        return Objective(forget=GA(), retain=NLL())
    if kind == "npo_kl":
        return Objective(forget=NPO(beta=0.1), retain=KL())
    return Objective(forget=RMU(layer=1, update_layers=[0, 1]), retain=RMURetain(layer=1))


@pytest.mark.parametrize(
    "kind,lora", [("ga_nll", False), ("npo_kl", False), ("rmu", False), ("ga_nll", True), ("npo_kl", True)]
)
def test_same_per_task_gradients_with_checkpointing(tiny, toy_splits, kind, lora, mlp_calls):
    base, tok = tiny
    rows = toy_splits["forget"][:4]
    b = batch_of(tok, rows)
    batch = {"forget": b, "retain": batch_of(tok, toy_splits["retain"][:4])}
    results = []
    for ckpt in (False, True):
        model = copy.deepcopy(base)
        if lora:
            from unlearn.models.lora import apply_lora

            torch.manual_seed(0)  # the adapter's initialisation draws from the global generator
            model = apply_lora(model, {"r": 4, "target_modules": ["q_proj", "v_proj"]})
        obj = _objective(kind)
        results.append(_task_grads(model, obj, batch, tok, ckpt, mlp_calls, encode_rows(tok, PromptFormat(), rows, 64)))
    (plain, calls_plain), (ckpt, calls_ckpt) = results
    assert calls_ckpt > calls_plain, "checkpointing was not active: no layer was recomputed in the backward pass"
    assert plain.keys() == ckpt.keys()
    for task in plain:
        assert any(g.abs().sum() > 0 for g in plain[task]), task
        for g0, g1 in zip(plain[task], ckpt[task], strict=True):
            torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)


def test_checkpointing_is_undone_after_training(tiny):
    model = copy.deepcopy(tiny[0])
    assert model.config.use_cache is not False
    with checkpointing(model):
        assert model.is_activation_checkpointing and model.config.use_cache is False
    assert not model.is_activation_checkpointing and model.config.use_cache is not False


def _unlearn(
    ckpt: bool, tmp_path, method: str, calls: list[int]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
    from unlearn import phases
    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    cfg = job_config(
        [
            f"method={method}",
            "logger=none",
            "train.steps=3",
            "train.batch_size=4",
            "train.checkpoint_every=0",
            "trainer.enable_progress_bar=false",
            "benchmark.data.n_people=10",
            "benchmark.data.n_holdout=2",
            f"model.gradient_checkpointing={str(ckpt).lower()}",
            f"paths.cache_dir={tmp_path / 'cache'}",
        ]
    )
    s = build_job(cfg, RunDir(tmp_path / f"run{ckpt}"))
    model, tok = s.spec.load(s.dtype)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    calls[0] = 0
    phases.unlearn(s, model, tok, s.data.build(), loggers=[])
    return start, {k: v.detach().clone() for k, v in model.state_dict().items()}, calls[0]


@pytest.mark.parametrize("method", ["sago", "npo"])
def test_unlearning_with_checkpointing_reaches_the_same_weights(tmp_path, method, mlp_calls):
    start, plain, calls_plain = _unlearn(False, tmp_path, method, mlp_calls)
    _, ckpt, calls_ckpt = _unlearn(True, tmp_path, method, mlp_calls)
    assert calls_ckpt > calls_plain  # the config key reached the training loop
    assert any(not torch.equal(plain[k], start[k]) for k in plain)  # the steps did train
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_must_be_a_bool(tmp_path, no_model_build):
    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    cfg = job_config(["logger=none", "model.gradient_checkpointing=yes"])
    with pytest.raises(ConfigError, match=r"model.gradient_checkpointing must be true or false, got 'yes'"):
        build_job(cfg, RunDir(tmp_path / "run"))


@pytest.mark.parametrize("lora", [False, True])
def test_a_checkpointed_model_pickles_for_spawned_ddp_workers(tiny, lora):
    import pickle

    model = copy.deepcopy(tiny[0])
    if lora:
        from unlearn.models.lora import apply_lora

        model = apply_lora(model, {"r": 4})
    with checkpointing(model):
        if lora:  # the adapter's input-grad hook is on while training
            assert model.get_base_model().get_input_embeddings()._forward_hooks
        pickle.loads(pickle.dumps(model))
    assert not model.get_input_embeddings()._forward_hooks


@pytest.mark.slow
def test_ddp_workers_train_with_checkpointing_to_the_same_weights(tiny, toy_splits, tmp_path):
    """trainer=ddp spawns workers with a pickled model: checkpointing must survive that and
    give the one-process result."""
    from test_ddp import BATCH, DDP, STEPS, WORLD, _module, _params, _stream

    from unlearn.training.fit import LoopConfig, fit, quiet_lightning

    quiet_lightning()
    model, tok = tiny
    one = copy.deepcopy(model)
    fit(
        _module(one),
        _stream(tok, toy_splits, WORLD * BATCH),
        tok.pad_token_id,
        WORLD * BATCH,
        STEPS,
        LoopConfig(accelerator="cpu", enable_progress_bar=False),
    )
    two = copy.deepcopy(model)
    loop = LoopConfig(accelerator="cpu", devices=WORLD, strategy=DDP, enable_progress_bar=False)
    with checkpointing(two):
        fit(
            _module(two),
            _stream(tok, toy_splits, BATCH, WORLD),
            tok.pad_token_id,
            BATCH,
            STEPS,
            loop,
            default_root_dir=str(tmp_path),
        )
    a, b = _params(one), _params(two)
    assert any(not torch.equal(_params(model)[n], b[n]) for n in b)
    for n in a:
        torch.testing.assert_close(b[n], a[n], rtol=1e-4, atol=1e-5)
