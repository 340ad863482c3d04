"""Batched greedy generation with stop strings (ROUGE, completion and QA metrics)."""

from __future__ import annotations

from typing import Any, Callable, Sequence, cast

import torch
from torch import nn

from unlearn.data.collate import pad
from unlearn.eval.scoring import context_length


@torch.no_grad()
def greedy(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    batch_size: int = 32,
    stop: Sequence[str] = (),
    add_special_tokens: bool = True,
    max_prompt_tokens: int | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` (left-padded batches), cut at EOS or the first stop string.

    ``max_prompt_tokens`` keeps only the last that many tokens of a longer prompt (the text right
    before the continuation matters most; long book or news prompts must fit the context)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    if max_prompt_tokens is not None:
        encoded = [_keep_last(ids, max_prompt_tokens, tokenizer.bos_token_id) for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    out: list[str] = [""] * len(prompts)
    # a Hugging Face causal LM (or a test double with the same method); nn.Module does not declare it
    generate = cast(Callable[..., torch.Tensor], model.generate)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            ids, mask = pad([encoded[i] for i in idx], pad_id, side="left")
            width = ids.shape[1]
            gen = generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for j, i in enumerate(idx):
                text = tokenizer.decode(gen[j, width:], skip_special_tokens=True)
                out[i] = cut_at_stop(text, stop)
    finally:
        model.train(was_training)
    return out


def _keep_last(ids: list[int], n: int, bos: int | None) -> list[int]:
    """The last ``n`` tokens, keeping a leading BOS in front."""
    if len(ids) <= n:
        return ids
    if bos is not None and ids and ids[0] == bos:
        return [bos] + ids[len(ids) - (n - 1) :]
    return ids[-n:]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        k = text.find(s)
        if k != -1:
            cut = min(cut, k)
    return text[:cut].strip()


def first_tokens(tokenizer: Any, text: str, n: int, add_special_tokens: bool = False) -> str:
    """``text`` cut to its first ``n`` tokens (a continuation of at most ``n`` new tokens is compared
    with the reference cut the same way). With ``add_special_tokens`` the ``n`` count the
    tokeniser's BOS (MUSE's VerbMem: ``tokenizer(gt, add_special_tokens=True).input_ids[:, :n]``,
    so BOS + n − 1 text tokens); special tokens never appear in the returned text."""
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    if len(ids) <= n:
        return text
    return tokenizer.decode(ids[:n], skip_special_tokens=True)


def prompt_budget(model: nn.Module, max_new_tokens: int, limit: int | None = None) -> int | None:
    """How many prompt tokens fit before ``max_new_tokens`` in the model's context (and ``limit``)."""
    ctx = context_length(model)
    room = ctx - max_new_tokens if ctx is not None else None
    if room is not None and room < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {ctx} tokens")
    options = [x for x in (room, limit) if x is not None]
    return min(options) if options else None
