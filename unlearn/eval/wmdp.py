"""WMDP's metrics (Li et al., 2024; data: :mod:`unlearn.benchmarks.wmdp`).

Zero-shot 4-choice accuracy on the WMDP questions by the likelihood of the answer letters (chance
0.25; lower is better), MMLU 5-shot accuracy, and recovery = MMLU after unlearning / MMLU of the
target model. The target is the base model itself; there is no oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

from unlearn.data.subsample import subsample
from unlearn.eval.choice import MMLU_DESCRIPTION, MCTask, per_subject_accuracy
from unlearn.eval.lmeval import LMEval
from unlearn.eval.mc_backend import MCBackend, as_backend
from unlearn.evaluator import EvalContext
from unlearn.rules import is_int

Row = Mapping[str, Any]

DIRECTIONS = {"wmdp_acc": -1, "mmlu_acc": +1, "mmlu_recovery": +1}


@dataclass
class WMDPEvaluator:
    """WMDP accuracy (zero-shot), MMLU accuracy (``n_shot``-shot) and MMLU recovery.

    ``max_questions``/``max_utility_questions`` evaluate a seeded subset for quick runs. ``chat``
    wraps each prompt in the model's chat template (off by default: the WMDP paper and lm-eval
    score the plain prompt). ``backend`` scores the questions (see :mod:`unlearn.eval.mc_backend`):
    the built-in letter scorer by default, or lm-evaluation-harness (``LMEval``, or ``"lmeval"``).
    """

    reports_diverged: ClassVar[bool] = False  # a diverged run is not evaluated
    name: str = "wmdp_bio"
    subject: str = "biology"
    questions: str = "wmdp"
    utility: str | None = "mmlu"
    few_shot: str = "mmlu_dev"
    n_shot: int = 5
    max_questions: int | None = None
    max_utility_questions: int | None = None
    batch_size: int = 16
    chat: bool = False
    backend: Any = "builtin"  # a backend object (from its _target_), or an alias: builtin | lmeval
    seed: int = 0
    directions: dict[str, int] = field(default_factory=lambda: dict(DIRECTIONS))

    def __post_init__(self) -> None:
        self.backend: MCBackend = as_backend(self.backend)
        if isinstance(self.backend, LMEval) and self.chat:
            raise ValueError(
                "benchmark.eval.chat=true is not supported with backend=lmeval "
                "(lm-eval formats chat prompts its own way)"
            )
        if not is_int(self.n_shot) or self.n_shot < 0:
            raise ValueError(f"benchmark.eval.n_shot must be an integer >= 0, got {self.n_shot!r}")
        for key in ("max_questions", "max_utility_questions", "batch_size"):
            v = getattr(self, key)
            if v is not None and (not is_int(v) or v < 1):
                or_null = " or null" if key != "batch_size" else ""
                raise ValueError(f"benchmark.eval.{key} must be a positive integer{or_null}, got {v!r}")

    def tasks(self, splits: Mapping[str, Sequence[Row]]) -> list[MCTask]:
        """The WMDP task (zero-shot) and, with ``utility``, the MMLU task (few-shot)."""
        for s in [self.questions] + ([self.utility, self.few_shot] if self.utility else []):
            if s not in splits:
                raise ValueError(f"benchmark {self.name!r} has no split {s!r} to evaluate (splits: {sorted(splits)})")
        out = [
            MCTask(
                "wmdp",
                subsample(splits[self.questions], self.max_questions, self.seed),
                n_shot=0,
                description=MMLU_DESCRIPTION,
                default_subject=self.subject,
                row_subject=False,
            )
        ]
        if self.utility:
            # the question's own subject names the description, as lm-eval's mmlu_<subject> tasks do
            out.append(
                MCTask(
                    "mmlu",
                    subsample(splits[self.utility], self.max_utility_questions, self.seed),
                    n_shot=self.n_shot,
                    dev=splits[self.few_shot],
                )
            )
        return out

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        """``{"metrics", "arrays"}``; the target model's record as ``ctx.target`` gives recovery.
        ``ctx.oracle`` is unused (WMDP has none)."""
        tasks = self.tasks(ctx.splits)
        res = self.backend(ctx.model, ctx.tokenizer, tasks, self.batch_size, ctx.fmt if self.chat else None)
        metrics = {f"{t.name}_acc": res[t.name]["acc"] for t in tasks}
        arrays: dict[str, Any] = {f"{t.name}_correct": res[t.name]["correct"] for t in tasks}
        if self.utility:
            arrays["mmlu_subject_acc"] = per_subject_accuracy(tasks[1].rows, res["mmlu"]["correct"])
            before = (ctx.target or {}).get("metrics", {}).get("mmlu_acc")
            if before:
                metrics["mmlu_recovery"] = metrics["mmlu_acc"] / before
        return {"metrics": metrics, "arrays": arrays}
