"""How multiple-choice tasks are scored: the ``benchmark.eval.backend`` of WMDP and RWKU.

A backend is a ``_target_`` (``unlearn.eval.mc_backend.LetterScorer``, the built-in letter
scorer, or ``unlearn.eval.lmeval.LMEval``, lm-evaluation-harness), called as
``backend(model, tokenizer, tasks, batch_size, chat)`` and returning, per task name, ``acc`` and
the per-question ``pred``, ``correct`` and ``logprobs [N, K]``. The strings ``builtin`` and
``lmeval`` that the key held before are still accepted (``benchmark.eval.backend=lmeval``) and name
those two targets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from torch import nn

from unlearn.data.format import PromptFormat
from unlearn.eval.choice import MCTask, evaluate_task
from unlearn.eval.lmeval import LMEval


class MCBackend(Protocol):
    def __call__(
        self,
        model: nn.Module,
        tokenizer: Any,
        tasks: Sequence[MCTask],
        batch_size: int = 16,
        chat: PromptFormat | None = None,
    ) -> dict[str, dict[str, Any]]: ...


@dataclass(frozen=True)  # stateless: repr, equality and hash by type
class LetterScorer:
    """The built-in backend: the likelihood of each answer letter after our prompts
    (:func:`~unlearn.eval.choice.evaluate_task`), in the chat template when ``chat`` is given."""

    def __call__(
        self,
        model: nn.Module,
        tokenizer: Any,
        tasks: Sequence[MCTask],
        batch_size: int = 16,
        chat: PromptFormat | None = None,
    ) -> dict[str, dict[str, Any]]:
        return {t.name: evaluate_task(model, tokenizer, t, batch_size, chat) for t in tasks}


#: the string values ``benchmark.eval.backend`` took before it was a ``_target_``
ALIASES: dict[str, type] = {"builtin": LetterScorer, "lmeval": LMEval}


def as_backend(value: Any, key: str = "benchmark.eval.backend") -> MCBackend:
    """``value`` itself when it is a backend object, or the backend an old string names."""
    if isinstance(value, str):
        if value not in ALIASES:
            raise ValueError(
                f"{key} must be a backend (_target_: unlearn.eval.mc_backend.LetterScorer or "
                f"unlearn.eval.lmeval.LMEval) or one of {sorted(ALIASES)}, got {value!r}"
            )
        return ALIASES[value]()
    if not callable(value):
        raise ValueError(
            f"{key} must be a backend called as backend(model, tokenizer, tasks, batch_size, chat), got {value!r}"
        )
    return value
