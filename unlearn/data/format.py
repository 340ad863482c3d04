"""Turning data rows into token ids with the prompt masked out of the labels.

Rows are plain dicts. A QA row has ``question`` and ``answer``; a text row has ``text``. The
:class:`PromptFormat` of the model config decides how a question becomes a prompt (a plain
template, or the tokenizer's chat template for instruction-tuned models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

Row = Mapping[str, Any]


@dataclass(frozen=True)
class PromptFormat:
    """How a question is shown to the model.

    ``template`` must contain ``{question}``; ``chat`` uses the tokenizer's chat template instead
    (with ``system`` as the system prompt when set). The answer follows ``answer_prefix``.
    """

    template: str = "Question: {question}\nAnswer:"
    answer_prefix: str = " "
    chat: bool = False
    system: str | None = None

    def __post_init__(self) -> None:
        if not self.chat and "{question}" not in self.template:
            raise ValueError(f"model.prompt.template must contain '{{question}}', got {self.template!r}")

    def prompt(self, question: str, tokenizer: Any = None) -> str:
        if not self.chat:
            return self.template.format(question=question)
        if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("model.prompt.chat=true but the tokenizer has no chat template")
        messages = [{"role": "user", "content": question}]
        if self.system:
            messages.insert(0, {"role": "system", "content": self.system})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def completion(self, answer: str) -> str:
        return ("" if self.chat else self.answer_prefix) + answer


def _ids(tokenizer: Any, text: str, add_special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special)["input_ids"])


def encode_qa(tokenizer: Any, fmt: PromptFormat, question: str, answer: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of prompt+answer+EOS, labels = -100 on the prompt.

    The prompt is tokenised alone and as the prefix of the full text; its length masks the labels,
    which is exact whenever the prompt ends on a token boundary (it ends in ':' or a chat tag).
    """
    prompt = fmt.prompt(question, tokenizer)
    add_special = not fmt.chat  # a chat template already carries BOS
    full = _ids(tokenizer, prompt + fmt.completion(answer), add_special)
    n_prompt = len(_ids(tokenizer, prompt, add_special))
    if tokenizer.eos_token_id is not None and (not full or full[-1] != tokenizer.eos_token_id):
        full.append(tokenizer.eos_token_id)
    full = full[:max_length]
    labels = [-100] * min(n_prompt, len(full)) + full[n_prompt:]
    return {"input_ids": full, "labels": labels}


def prompt_length(tokenizer: Any, fmt: PromptFormat, row: Row) -> int:
    """Tokens before the first answer token of ``row`` (0 for a plain text row)."""
    if "question" not in row:
        return 0
    return len(_ids(tokenizer, fmt.prompt(row["question"], tokenizer), not fmt.chat))


def encode_text(tokenizer: Any, text: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of a plain text; every token is a label (language-modelling rows)."""
    ids = _ids(tokenizer, text, True)[:max_length]
    return {"input_ids": ids, "labels": list(ids)}


def encode_row(
    tokenizer: Any, fmt: PromptFormat, row: Row, max_length: int, answer_key: str = "answer"
) -> dict[str, Any]:
    if "question" in row and answer_key in row:
        enc = encode_qa(tokenizer, fmt, row["question"], row[answer_key], max_length)
    elif "text" in row:
        enc = encode_text(tokenizer, row["text"], max_length)
    else:
        raise ValueError(f"row {row.get('id', '?')!r} has neither question/{answer_key} nor text (keys: {sorted(row)})")
    return {**enc, "id": str(row.get("id", ""))}


def encode_rows(tokenizer: Any, fmt: PromptFormat, rows: Sequence[Row], max_length: int) -> list[dict[str, Any]]:
    return [encode_row(tokenizer, fmt, r, max_length) for r in rows]
