"""Loading and saving Hugging Face checkpoints, and choosing device and dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from unlearn.config import ConfigError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on GPU and fp32 on CPU (bf16 matmuls are ~24x slower on CPUs)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def ensure_pad(tokenizer: Any) -> Any:
    """Many causal-LM tokenizers have no pad token; batches pad with EOS (masked out anyway)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quiet_transformers() -> None:
    """No per-file 'Loading weights' bars: the pipeline reports its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def causal_lm(where: str, **kwargs: Any) -> Any:
    """``AutoModelForCausalLM.from_pretrained(where, **kwargs)``, refusing weights that do not fit
    the config: transformers leaves a tensor the checkpoint lacks randomly initialised and goes on
    (a config.json for another architecture gave a run on a random model that reported results),
    and a tensor of another shape raises its own report. Either is a :class:`ConfigError` naming
    ``where``."""
    from transformers import AutoModelForCausalLM

    try:
        loaded: Any = AutoModelForCausalLM.from_pretrained(where, output_loading_info=True, **kwargs)
        model, info = loaded
    except RuntimeError as e:  # transformers' size-mismatch report
        if "size mismatch" not in str(e) and "mismatched_sizes" not in str(e):
            raise
        raise ConfigError(
            f"{where}: the weights do not have the shapes its config.json describes ({str(e).splitlines()[0][:200]})"
        ) from e
    missing, unused = list(info.get("missing_keys", [])), list(info.get("unexpected_keys", []))
    if missing:
        raise ConfigError(
            f"{where}: {len(missing)} of the {type(model).__name__}'s tensors (its config.json's model_type "
            f"{model.config.model_type!r}) are not in the checkpoint, e.g. {missing[:3]}; "
            + (f"{len(unused)} of the checkpoint's go unused, e.g. {unused[:3]}; " if unused else "")
            + "is config.json for another architecture or size?"
        )
    return model


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from a local Hugging Face folder."""
    from transformers import AutoTokenizer

    quiet_transformers()
    path = Path(path).expanduser()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: not a Hugging Face model folder (no config.json)")
    model = causal_lm(str(path), dtype=dtype)
    tokenizer = ensure_pad(AutoTokenizer.from_pretrained(str(path)))
    return model, tokenizer


def save_checkpoint(model: Any, tokenizer: Any, path: str | Path) -> Path:
    quiet_transformers()
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    target = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    target.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    if not (path / "config.json").exists():  # transformers saves nothing on a rank other than 0
        raise RuntimeError(
            f"save_pretrained wrote no model to {path} (a process other than rank 0 of a process group?)"
        )
    return path


def checkpoint_fingerprint(path: str | Path) -> dict[str, Any]:
    """Identifies a user-given checkpoint for cache keys: its path, file names, sizes and mtimes."""
    p = Path(path).expanduser().resolve()
    files = sorted(f for f in p.rglob("*") if f.is_file())
    return {"path": str(p), "files": [(str(f.relative_to(p)), f.stat().st_size, int(f.stat().st_mtime)) for f in files]}
