"""A byte-level BPE tokenizer built offline and deterministically with the `tokenizers` library."""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}


def train_bpe(lines: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE over ``lines``; same lines and size always give the same tokenizer."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(lines)), trainer=trainer)
    return tok


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer that prepends BOS (single sequences) and knows its special tokens."""
    from tokenizers import processors

    bos = tok.token_to_id(SPECIAL["bos"])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIAL['bos']} $A", special_tokens=[(SPECIAL["bos"], bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"],
        eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"],
        unk_token=SPECIAL["unk"],
        padding_side="right",
    )


def fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A stable hash of the tokenizer's vocabulary and merges (part of model cache keys)."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    payload = json.dumps({"model": data["model"], "added": data.get("added_tokens")}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
