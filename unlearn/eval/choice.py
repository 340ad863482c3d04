"""Letter-answer multiple choice (MMLU/WMDP style): prompt building and batched scoring.

A question is shown as ``question\\nA. …\\nB. …\\nC. …\\nD. …\\nAnswer:`` (after an optional
description and few-shot examples, each followed by its answer letter), and the prediction is the
letter whose continuation ``" A"``/``" B"``/… is most likely. This is lm-evaluation-harness's
MMLU/WMDP protocol (Hendrycks et al., 2021; Li et al., 2024), reproduced token for token so that
:mod:`unlearn.eval.lmeval` gives the same answers. The cloze scorer (each choice scored as the
answer text) stays in :func:`unlearn.eval.scoring.multiple_choice`.

Kept apart from ``scoring.py`` (which it builds on) so that benchmarks adding other scorers there
do not collide with this one.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from unlearn.data.collate import pad
from unlearn.data.format import PromptFormat
from unlearn.eval.scoring import score_rows
from unlearn.utils.progress import Steps

Row = Mapping[str, Any]
LETTERS = ("A", "B", "C", "D")
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {subject}.\n\n"


# -- prompts -----------------------------------------------------------------------------------
def question_block(row: Row, labels: Sequence[str] = LETTERS, with_answer: bool = False) -> str:
    """``question\\nA. c0\\n…\\nAnswer:`` (plus ``" <letter>"`` for a few-shot example)."""
    choices = row["choices"]
    if len(choices) > len(labels):
        raise ValueError(
            f"question {row.get('id', row['question'][:40])!r} has {len(choices)} choices but only {len(labels)} labels"
        )
    lines = [str(row["question"]).strip(), *(f"{labels[i]}. {c}" for i, c in enumerate(choices)), "Answer:"]
    text = "\n".join(lines)
    return text + f" {labels[int(row['answer'])]}" if with_answer else text


def subject_name(row: Row, default: str) -> str:
    return str(row.get("subject") or default).replace("_", " ")


def mc_prompt(row: Row, shots: Sequence[Row] = (), description: str = "", labels: Sequence[str] = LETTERS) -> str:
    """lm-eval's context: description + few-shot examples and the question, joined by blank lines."""
    return description + "\n\n".join(
        [*(question_block(s, labels, with_answer=True) for s in shots), question_block(row, labels)]
    )


def first_n_by_subject(dev: Sequence[Row], n: int) -> Callable[[Row], list[Row]]:
    """Few-shot examples for a row: the first ``n`` dev rows of its subject (MMLU's 5-shot, and
    lm-eval's ``first_n`` sampler); rows that carry their own ``examples`` list use those."""
    pool: dict[str, list[Row]] = {}
    for r in dev:
        pool.setdefault(str(r.get("subject", "")), []).append(r)

    def shots(row: Row) -> list[Row]:
        if n <= 0:
            return []
        if "examples" in row and row["examples"]:
            return list(row["examples"])[:n]
        return pool.get(str(row.get("subject", "")), [])[:n]

    return shots


@dataclass
class MCTask:
    """One set of 4-choice questions and how to prompt it.

    ``rows`` have ``question``, ``choices`` and ``answer`` (index), optionally ``subject``;
    ``dev`` is the few-shot pool (first ``n_shot`` rows of the same subject); ``description`` may
    contain ``{subject}``: the row's ``subject`` (``default_subject`` when it has none), or always
    ``default_subject`` when ``row_subject`` is false.
    """

    name: str
    rows: Sequence[Row]
    n_shot: int = 0
    dev: Sequence[Row] = ()
    description: str = MMLU_DESCRIPTION
    default_subject: str = "general knowledge"
    labels: Sequence[str] = LETTERS
    row_subject: bool = True
    shots: Callable[[Row], list[Row]] | None = field(default=None, repr=False)

    def subject(self, row: Row) -> str:
        """The subject named in the description: the row's own (MMLU) or the task's (WMDP)."""
        return subject_name(row, self.default_subject) if self.row_subject else self.default_subject

    def contexts(self) -> list[str]:
        shots = self.shots or first_n_by_subject(self.dev, self.n_shot)
        return [
            mc_prompt(r, shots(r), self.description.format(subject=self.subject(r)), self.labels) for r in self.rows
        ]

    def answers(self) -> np.ndarray:
        return np.array([int(r["answer"]) for r in self.rows], dtype=np.int64)


# -- scoring -----------------------------------------------------------------------------------
def context_limit(model: nn.Module, default: int = 2048) -> int:
    """Tokens a context may have: the model's position limit (lm-eval's rule, same order)."""
    config = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if getattr(config, attr, None):
            return int(getattr(config, attr))
    return default


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def encode_pair(
    tokenizer: Any, context: str, continuation: str, add_special_tokens: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` as it follows it, split the way
    lm-evaluation-harness splits them: trailing spaces move to the continuation, and the
    continuation is what encoding ``context + continuation`` adds after the context's tokens."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = _ids(tokenizer, context + continuation, add_special_tokens)
    ctx = _ids(tokenizer, context, add_special_tokens)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def _last_token_logprobs(
    model: nn.Module, contexts: Sequence[list[int]], pad_id: int, batch_size: int, steps: Steps | None, every: int = 1
) -> list[torch.Tensor]:
    """log p(· | context) at each context's last position: one forward per context, batched
    longest-first with right padding (the logits are cut to the last position before float()).
    ``steps`` advances once every ``every`` batches and after the last."""
    device = next(model.parameters()).device
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(contexts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad([contexts[i] for i in idx], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        last = torch.tensor([len(contexts[i]) - 1 for i in idx], device=logits.device)
        logp = logits[torch.arange(len(idx), device=logits.device), last].float().log_softmax(-1).cpu()
        for j, i in enumerate(idx):
            out[i] = logp[j]
        done = min(start + batch_size, len(order))
        if steps is not None and (done == len(order) or (start // batch_size + 1) % every == 0):
            steps.advance(f"{done}/{len(order)}")
    return out


def letter_logprobs(
    model: nn.Module,
    tokenizer: Any,
    contexts: Sequence[str],
    labels: Sequence[str] = LETTERS,
    batch_size: int = 16,
    add_special_tokens: bool = True,
    max_length: int | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """``[N, K]`` log-likelihood of each label's continuation ``" <label>"`` after each context.

    When every label is one token after its context (the usual case: " A" … " D"), one forward per
    question scores all labels from the last position; otherwise that question's labels are scored
    as full continuations (one sequence each). Contexts longer than ``max_length`` (default: the
    model's maximum) keep their last tokens, as lm-eval does.
    """
    limit = max_length or context_limit(model)
    pairs = [[encode_pair(tokenizer, c, " " + lab, add_special_tokens) for lab in labels] for c in contexts]
    out = np.full((len(contexts), len(labels)), -np.inf)
    fast = [i for i, p in enumerate(pairs) if all(len(cont) == 1 for _, cont in p)]
    slow = sorted(set(range(len(pairs))) - set(fast))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        # lm-eval feeds (context + continuation)[-(limit + 1):][:-1]: the context's last `limit` tokens
        n_batches = -(-len(fast) // batch_size)
        every = max(1, n_batches // 20)  # about 20 progress lines, however large the set
        with Steps(progress, total=max(1, -(-n_batches // every))) if progress else nullcontext() as steps:
            logp = _last_token_logprobs(model, [pairs[i][0][0][-limit:] for i in fast], pad, batch_size, steps, every)
        for i, lp in zip(fast, logp, strict=True):
            out[i] = [float(lp[cont[0]]) for _, cont in pairs[i]]
        if slow:
            encoded = []
            for i in slow:
                for ctx, cont in pairs[i]:
                    full = (ctx + cont)[-(limit + 1) :]
                    encoded.append({"input_ids": full, "labels": [-100] * (len(full) - len(cont)) + cont})
            s = score_rows(model, encoded, pad, batch_size)
            out[slow] = -s.nll_sum.reshape(len(slow), len(labels))
    finally:
        model.train(was_training)
    return out


def chat_context(fmt: PromptFormat, tokenizer: Any, body: str, suffix: str = "Answer:") -> str:
    """The prompt body as one user turn of the model's chat template, then ``suffix`` (RWKU's way
    of asking an instruction-tuned model for a letter)."""
    return fmt.prompt(body, tokenizer) + suffix


def task_contexts(tokenizer: Any, task: MCTask, chat: PromptFormat | None = None) -> tuple[list[str], bool]:
    """The prompts of ``task`` as scored, and whether the tokenizer adds its special tokens (not
    when a chat template writes them): each context minus its final ``Answer:`` becomes a user turn
    and ``Answer:`` follows the assistant header."""
    contexts = task.contexts()
    if chat is not None and chat.chat:
        return [chat_context(chat, tokenizer, c[: -len("Answer:")].rstrip()) for c in contexts], False
    return contexts, True


def evaluate_task(
    model: nn.Module, tokenizer: Any, task: MCTask, batch_size: int = 16, chat: PromptFormat | None = None
) -> dict[str, Any]:
    """Accuracy and per-question predictions of one :class:`MCTask` with the letter scorer.

    With ``chat`` (a chat :class:`PromptFormat`), each context minus its final ``Answer:`` becomes a
    user turn and ``Answer:`` follows the assistant header.
    """
    contexts, special = task_contexts(tokenizer, task, chat)
    lp = letter_logprobs(
        model,
        tokenizer,
        contexts,
        task.labels,
        batch_size,
        add_special_tokens=special,
        progress=f"{task.name} ({len(contexts)} questions)",
    )
    pred = lp.argmax(-1)
    correct = (pred == task.answers()).astype(float)
    return {
        "acc": float(correct.mean()) if len(correct) else float("nan"),
        "pred": pred.tolist(),
        "correct": correct.tolist(),
        "logprobs": lp,
    }


def per_subject_accuracy(rows: Sequence[Mapping[str, Any]], correct: Sequence[float]) -> dict[str, Any]:
    """Accuracy per subject (MMLU reports the mean over questions; this is for inspection)."""
    acc: dict[str, list[float]] = {}
    for r, c in zip(rows, correct, strict=True):
        acc.setdefault(str(r.get("subject", "")), []).append(float(c))
    return {k: sum(v) / len(v) for k, v in sorted(acc.items())}
