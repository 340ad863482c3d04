"""The default ``tiny`` model: a randomly initialised Llama-architecture causal LM and its tokenizer.

Built from a config with a fixed seed, offline, in about a second; the tokenizer is a byte-level
BPE trained on the toy world's vocabulary (any text still tokenises, byte by byte at worst).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from unlearn.benchmarks.toy_world import vocabulary_corpus
from unlearn.models.tokenizer import fingerprint, train_bpe, wrap
from unlearn.rules import is_int


def tiny_tokenizer(vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    return wrap(train_bpe(vocabulary_corpus(), vocab_size))


@dataclass(frozen=True)
class TinyLlama:
    """A few-million-parameter Llama (defaults: 4 layers, width 128, about 1.6M parameters)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 2048
    max_position_embeddings: int = 512
    seed: int = 0
    name: str = "tiny"

    def __post_init__(self) -> None:
        for key in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size"):
            v = getattr(self, key)
            if not is_int(v) or v < 1:
                raise ValueError(f"model.{key} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})"
            )

    def load_tokenizer(self) -> PreTrainedTokenizerFast:
        return tiny_tokenizer(self.vocab_size)

    def load(self, dtype: torch.dtype = torch.float32) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
        tokenizer = self.load_tokenizer()
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = LlamaForCausalLM(config)
        # transformers declares to() with @wraps(nn.Module.to), which hides from mypy that it is bound
        return model.to(dtype), tokenizer  # type: ignore[arg-type]

    def cache_key(self) -> dict[str, Any]:
        """Everything that determines the initial weights (hashed into fine-tuned model caches)."""
        return {"kind": "tiny_llama", **asdict(self), "tokenizer": fingerprint(self.load_tokenizer())}
