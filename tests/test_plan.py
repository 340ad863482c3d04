"""The memory plan: shipped architecture numbers, byte counts against a real model, the pre-load stop."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import CONF, REPO, job_config, run_cli

from unlearn.plan.arch import ARCH, meta_model, model_config
from unlearn.plan.budget import GRAD_BUFFERS, GiB, Options, make_plan, with_overrides
from unlearn.plan.check import WontFit, check_fits

#: parameter counts the models are known for (their model cards / the safetensors index)
KNOWN = {
    "HuggingFaceH4/zephyr-7b-beta": 7.24e9,
    "meta-llama/Llama-2-7b-chat-hf": 6.74e9,
    "meta-llama/Llama-2-7b-hf": 6.74e9,
    "meta-llama/Meta-Llama-3-8B-Instruct": 8.03e9,
    "microsoft/phi-1_5": 1.42e9,
    "facebook/opt-2.7b": 2.65e9,
    "HuggingFaceTB/SmolLM2-135M-Instruct": 134.5e6,
}


@pytest.mark.parametrize("hub_id", sorted(ARCH))
def test_shipped_numbers_give_the_known_parameter_counts(hub_id):
    n = sum(p.numel() for p in meta_model(ARCH[hub_id].hf_config()).parameters())
    assert abs(n - KNOWN[hub_id]) / KNOWN[hub_id] < 0.005, (hub_id, n)


@pytest.mark.parametrize("model", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
def test_every_preset_model_has_architecture_numbers_offline(model, hub_unreachable):
    cfg = job_config([f"model={model}"])
    from unlearn.config import build

    config, source = model_config(cfg, build(cfg, "model.spec"))
    assert config.num_hidden_layers > 0 and config.vocab_size > 0
    assert "cache" not in source  # shipped or built in: nothing looked up


def test_a_local_config_json_is_read(tmp_path):
    arch = ARCH["meta-llama/Llama-2-7b-hf"]
    c = arch.hf_config()
    c.num_hidden_layers = 2  # not the shipped numbers: the file must have been read
    c.save_pretrained(tmp_path)
    cfg = job_config(["model=llama2_7b", f"model.spec.path={tmp_path}"])
    plan = make_plan(cfg)
    assert str(tmp_path) in plan.source
    assert plan.params < 1e9


def _tiny_cfg(*extra: str):
    return job_config(["model=tiny", "model.dtype=float32", "logger=none", *extra])


def _state_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def test_tiny_plan_matches_the_real_parameter_gradient_and_optimizer_bytes(tiny, toy_splits):
    cfg = _tiny_cfg("combiner=pcgrad_global")
    plan = make_plan(cfg)
    from unlearn.config import build

    model, tok = build(cfg, "model.spec").load(torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    assert plan.weights == _state_bytes(model.parameters())
    from conftest import batch_of

    loss = model(
        **{
            k: v
            for k, v in batch_of(tok, toy_splits["forget"][:2]).items()
            if k in ("input_ids", "attention_mask", "labels")
        }
    ).loss
    grads = torch.autograd.grad(loss, params)
    assert plan.buffers == GRAD_BUFFERS["PCGradGlobal"]["single"] == 3
    assert plan.gradients == plan.buffers * _state_bytes(grads)
    opt = torch.optim.AdamW(params)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()
    moments = [t for s in opt.state.values() for k, t in s.items() if k != "step"]
    assert plan.optimizer == _state_bytes(moments)


def test_tiny_plan_counts_lora_and_rmu_trainables_and_the_kl_reference(tiny):
    from unlearn.config import build
    from unlearn.models.lora import apply_lora
    from unlearn.models.reference import Reference

    lora = make_plan(_tiny_cfg("model.lora={r:4}"))
    model, _ = build(_tiny_cfg(), "model.spec").load(torch.float32)
    real = apply_lora(copy.deepcopy(model), {"r": 4})
    assert lora.trainable == sum(p.numel() for p in real.parameters() if p.requires_grad) > 0
    assert lora.weights == _state_bytes(real.parameters())

    rmu_cfg = _tiny_cfg("method=rmu")
    rmu = make_plan(rmu_cfg)
    forget = build(rmu_cfg, "forget")
    assert rmu.trainable == sum(p.numel() for _, p in forget.trained(model)) < rmu.params / 5

    kl = make_plan(_tiny_cfg("retain=kl"))
    ref = Reference(model)
    ref.snapshot()
    assert kl.reference == ref.memory_bytes > 0
    assert make_plan(_tiny_cfg("retain=kl", "model.lora={r:4}")).reference == 0  # the base is the reference


def test_buffers_by_step_path_and_sharding():
    cfg = job_config(["experiment=sago_wmdp/bio_npo_sago"])
    one = make_plan(with_overrides(cfg, {"train.accumulate": 1}))
    acc = make_plan(cfg)
    assert (one.path, one.buffers, acc.path, acc.buffers) == ("single", 1, "accumulate", 2)
    dp = make_plan(cfg, Options(gpus=8))
    fsdp = make_plan(cfg, Options(gpus=8, sharded=True))
    assert dp.path == "ddp" and dp.weights == acc.weights  # replication: per-GPU weights stay
    assert fsdp.weights == pytest.approx(dp.weights / 8, rel=1e-6) and fsdp.optimizer == pytest.approx(
        dp.optimizer / 8, rel=1e-6
    )
    assert fsdp.activations == dp.activations
    ckpt = make_plan(with_overrides(cfg, {"model.gradient_checkpointing": True}))
    assert ckpt.activations < acc.activations / 5 and ckpt.activations_other == acc.activations


@pytest.mark.parametrize("ckpt", [False, True])
def test_activation_estimate_is_near_a_measured_step(ckpt):
    """tiny_10m, one GA step at 8x128 in fp32: the plan's activations plus one gradient buffer
    against the peak tensor memory of the forward and backward pass (CPU profiler)."""
    from unlearn.config import build
    from unlearn.losses import GA
    from unlearn.models.checkpointing import checkpointing
    from unlearn.perf.memory import PeakMemory

    cfg = job_config(
        [
            "model=tiny_10m",
            "model.dtype=float32",
            "method=ga",
            "retain=none",
            "smoothing=none",
            "train.batch_size=8",
            "train.max_length=128",
            f"model.gradient_checkpointing={str(ckpt).lower()}",
        ]
    )
    plan = make_plan(cfg)
    model, tok = build(cfg, "model.spec").load(torch.float32)
    model.train()
    ids = torch.randint(0, len(tok), (8, 128), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    params = [p for p in model.parameters() if p.requires_grad]
    with checkpointing(model, ckpt), PeakMemory("cpu") as m:
        torch.autograd.grad(GA()(model, batch).mean(), params)
    estimate = plan.activations + plan.gradients
    assert 0.75 < estimate / m.peak < 1.25, (estimate / 2**20, m.peak / 2**20)


def test_the_preload_check_names_the_options_and_is_off_on_cpu(monkeypatch, no_model_build):
    cfg = job_config(["experiment=sago_wmdp/bio_npo_sago"])
    assert check_fits(cfg, torch.device("cpu")) is None  # no GPU, no check
    monkeypatch.setattr("unlearn.plan.check.device_memory", lambda device: 24 * GiB)
    with pytest.raises(WontFit) as e:
        check_fits(cfg, torch.device("cuda"))
    msg = str(e.value)
    for option in ("model.gradient_checkpointing=true", "model.lora=", "trainer=fsdp", "train.batch_size"):
        assert option in msg, option
    assert "trainer=fsdp trainer.devices=" in msg or "trainer=fsdp (sharding" in msg
    monkeypatch.setattr("unlearn.plan.check.device_memory", lambda device: 141 * GiB)
    assert check_fits(cfg, torch.device("cuda")).total < 141 * GiB * 0.9


def test_unlearn_stops_before_loading_when_the_plan_does_not_fit(tmp_path):
    corpus = tmp_path / "bio.jsonl"
    corpus.write_text('{"text": "a forget document"}\n')
    r = run_cli(
        ["experiment=sago_wmdp/bio_rmu", f"benchmark.data.forget_path={corpus}", "plan.gpu_memory_gb=8", "logger=none"],
        tmp_path,
        tmp_path / "cache",
        timeout=300,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    assert "memory plan:" in r.stderr and "model.gradient_checkpointing=true" in r.stderr and "trainer=fsdp" in r.stderr
    assert "stopped before loading any weight" in r.stderr


def test_plan_cli_prints_a_sharded_plan(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "unlearn.plan",
            "experiment=sago_rwku/npo_sago",
            "--gpus",
            "8",
            "--sharded",
            "plan.gpu_memory_gb=80",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    for row in (
        "weights",
        "optimizer state",
        "gradient buffers",
        "reference",
        "activations",
        "total",
        "8 GPUs, sharded",
        "fits",
    ):
        assert row in r.stdout, row
    assert not list(Path(tmp_path).iterdir())  # nothing written


@pytest.mark.parametrize(
    "override,message",
    [
        ("plan.gpus=0", "plan.gpus must be an integer > 0"),
        ("plan.sharded=maybe", "plan.sharded must be true or false"),
        ("plan.headroom=1.5", "plan.headroom must be a number in [0, 1)"),
    ],
)
def test_bad_plan_keys_are_errors_before_any_model_even_on_cpu(override, message, no_model_build):
    from unlearn.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        check_fits(job_config([override]), torch.device("cpu"))
