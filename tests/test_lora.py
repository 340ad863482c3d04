"""LoRA adapters (PEFT): only the adapter trains, and reference-based losses use the base weights
with the adapter disabled instead of a copy."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import batch_of, job_config
from test_losses import context

from unlearn.config import ConfigError
from unlearn.job import build_job
from unlearn.losses import GA, KL, NLL, NPO, Objective
from unlearn.losses.common import logits_of, sequence_nll
from unlearn.losses.kl import token_kl
from unlearn.models.load import load_checkpoint, save_checkpoint
from unlearn.models.lora import apply_lora
from unlearn.models.reference import Reference
from unlearn.rundir import RunDir
from unlearn.training.fit import LoopConfig, fit, quiet_lightning
from unlearn.training.module import UnlearnModule
from unlearn.training.optim import OptimConfig

LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}


def adapted(model, seed=0):
    """A LoRA-wrapped copy whose adapter is already non-zero (as after some training)."""
    pm = apply_lora(copy.deepcopy(model), LORA)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    return pm


def test_only_the_adapter_trains(tiny):
    model, _ = tiny
    pm = apply_lora(copy.deepcopy(model), LORA)
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_npo_reference_is_the_base_with_the_adapter_disabled(tiny, toy_splits):
    model, tok = tiny
    pm = adapted(model)
    rows = toy_splits["forget"][:4]
    batch = batch_of(tok, rows)
    npo = NPO(beta=0.1)
    npo.prepare(context(pm, tok, {"forget": rows}))
    counts = batch["labels"][:, 1:].ne(-100).sum(-1)
    with torch.no_grad():
        base, _ = sequence_nll(model, batch)
        now, _ = sequence_nll(pm, batch)
    torch.testing.assert_close(npo.reference_logps(batch, counts), -base)
    assert not torch.allclose(-now, -base, atol=1e-3)  # the adapter does change the model


def test_kl_reference_under_lora_is_the_base_and_costs_no_copy(tiny, toy_splits):
    model, tok = tiny
    pm = adapted(model)
    kl = KL()
    ctx = context(pm, tok, {"retain": toy_splits["retain"][:4]})
    kl.prepare(ctx)
    assert ctx.reference.memory_bytes == 0
    batch = batch_of(tok, toy_splits["retain"][:4])
    with torch.no_grad():
        want = token_kl(logits_of(model, batch), logits_of(pm, batch), batch["labels"])
        got = kl(pm, batch)
    torch.testing.assert_close(got, want)
    assert float(got.min()) > 0


def test_training_moves_only_the_adapter_and_saving_merges_it(tiny, toy_splits, tmp_path):
    from unlearn.data.format import PromptFormat, encode_rows
    from unlearn.data.paired import PairedStream

    quiet_lightning()
    model, tok = tiny
    pm = apply_lora(copy.deepcopy(model), LORA)
    before = {n: p.detach().clone() for n, p in pm.named_parameters()}
    fmt = PromptFormat()
    stream = PairedStream(
        encode_rows(tok, fmt, toy_splits["forget"], 64), encode_rows(tok, fmt, toy_splits["retain"], 64), 12, seed=0
    )
    fit(
        UnlearnModule(pm, Objective(GA(), NLL()), optim=OptimConfig(lr=1e-2, warmup_ratio=0.0, schedule="constant")),
        stream,
        tok.pad_token_id,
        4,
        3,
        LoopConfig(accelerator="cpu", enable_progress_bar=False),
    )
    changed = {n for n, p in pm.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)
    batch = batch_of(tok, toy_splits["forget"][:2])
    with torch.no_grad():
        want = logits_of(pm, batch)
    save_checkpoint(pm, tok, tmp_path / "model")
    merged, _ = load_checkpoint(tmp_path / "model")
    with torch.no_grad():
        torch.testing.assert_close(logits_of(merged, batch), want, rtol=1e-4, atol=1e-4)
    assert Reference(model).memory_bytes == 0


def test_lora_is_set_from_the_command_line_and_bad_keys_name_the_key(tmp_path):
    cfg = job_config(["model.lora={r: 4, alpha: 8, target_modules: [q_proj]}", f"paths.cache_dir={tmp_path}"])
    build_job(cfg, RunDir(tmp_path / "run"))
    for bad, message in [
        ("model.lora={rank: 4}", r"model.lora: unknown keys \['rank'\]"),
        ("model.lora={r: 0}", "model.lora.r must be an integer >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_job(job_config([bad, f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run2"))


def test_rmu_under_lora_trains_only_the_adapter_of_its_layers(tiny, toy_splits):
    from unlearn.losses import RMU, RMURetain

    model, tok = tiny
    pm = adapted(model)
    rmu, keep = RMU(layer=1, update_layers=[1], update_params=["mlp.down_proj"]), RMURetain(layer=1)
    ctx = context(pm, tok, {"forget": toy_splits["forget"][:2]})
    rmu.prepare(ctx)
    keep.prepare(ctx)
    trained = sorted(n for n, p in pm.named_parameters() if p.requires_grad)
    assert trained == [f"base_model.model.model.layers.1.mlp.down_proj.lora_{x}.default.weight" for x in "AB"]
    batch = batch_of(tok, toy_splits["retain"][:3])
    with torch.no_grad():
        want = logits_of(pm, batch)
    loss = rmu(pm, batch_of(tok, toy_splits["forget"][:2])).mean() + keep(pm, batch).mean()
    loss.backward()
    assert float(keep(pm, batch).detach().min()) > 0  # the adapter is non-zero: h_k differs from the base's
    with torch.no_grad():  # the hook's early stop left the adapter switched on
        torch.testing.assert_close(logits_of(pm, batch), want)
    # running the reference (PEFT's disable_adapter) left RMU's choice of trainable tensors alone
    assert sorted(n for n, p in pm.named_parameters() if p.requires_grad) == trained
