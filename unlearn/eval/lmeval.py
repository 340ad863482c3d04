"""Running :class:`~unlearn.eval.choice.MCTask` sets through lm-evaluation-harness, offline.

Optional (``pip install 'unlearn[lmeval]'``). The in-memory model and tokenizer are wrapped in
lm-eval's ``HFLM``; each task (one per subject, as lm-eval's ``mmlu_<subject>`` tasks) is a custom
task on JSONL files written to a temporary folder, with the same template as lm-eval's MMLU/WMDP
tasks (``doc_to_text`` with ``A. …`` lines and ``Answer:``, choices ``A``–``D``, ``first_n``
few-shot examples from a dev split). Nothing is fetched from the hub.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from torch import nn

from unlearn.data.format import PromptFormat
from unlearn.eval.choice import MCTask, context_limit, first_n_by_subject, task_contexts


def _require_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as e:
        raise ImportError(
            "benchmark.eval.backend=lmeval needs lm-evaluation-harness: pip install 'unlearn[lmeval]' (or lm-eval)"
        ) from e
    return lm_eval


def doc_to_text(labels: Sequence[str]) -> str:
    """lm-eval's MMLU/WMDP ``doc_to_text`` Jinja template, for any number of labels."""
    lines = ["{{question.strip()}}", *(f"{lab}. {{{{choices[{i}]}}}}" for i, lab in enumerate(labels)), "Answer:"]
    return "\n".join(lines)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _task_configs(task: MCTask, folder: Path) -> list[tuple[str, dict[str, Any], list[int]]]:
    """One lm-eval task config per subject of ``task``: ``(name, config, row indices)``."""
    if task.n_shot and (task.shots is not None or any(r.get("examples") for r in task.rows)):
        raise ValueError(
            f"{task.name}: the lm-eval backend takes few-shot examples from a dev split only, not per question"
        )
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(task.rows):
        groups.setdefault(task.subject(r), []).append(i)
    shots = first_n_by_subject(task.dev, task.n_shot)
    out = []
    for k, (subject, idx) in enumerate(sorted(groups.items())):
        name = f"unlearn_{task.name}_{k}"
        docs = [
            {
                "question": task.rows[i]["question"],
                "choices": list(task.rows[i]["choices"]),
                "answer": int(task.rows[i]["answer"]),
                "row": i,
            }
            for i in idx
        ]
        files = {"test": _write_jsonl(folder / f"{name}.test.jsonl", docs)}
        examples = shots(task.rows[idx[0]]) if task.n_shot else []
        if task.n_shot and len(examples) < task.n_shot:
            raise ValueError(
                f"{task.name}: subject {subject!r} has {len(examples)} few-shot examples, {task.n_shot} needed"
            )
        if task.n_shot:
            dev = [
                {"question": e["question"], "choices": list(e["choices"]), "answer": int(e["answer"]), "row": -1}
                for e in examples
            ]
            files["dev"] = _write_jsonl(folder / f"{name}.dev.jsonl", dev)
        cfg = _mc_config(
            name,
            folder,
            files,
            doc_to_text(task.labels),
            task.labels,
            task.n_shot,
            task.description.format(subject=subject),
        )
        if task.n_shot:
            cfg.update(fewshot_split="dev", fewshot_config={"sampler": "first_n"})
        out.append((name, cfg, idx))
    return out


def _mc_config(
    name: str,
    folder: Path,
    files: dict[str, str],
    text: str,
    labels: Sequence[str],
    n_shot: int = 0,
    description: str = "",
) -> dict[str, Any]:
    """An lm-eval multiple-choice task on local JSONL ``files`` (docs with ``answer`` and ``row``)."""
    return {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"cache_dir": str(folder / "cache"), "data_files": files},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": text,
        "doc_to_choice": list(labels),
        "doc_to_target": "answer",
        "description": description,
        "num_fewshot": n_shot,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def _collect(samples: Sequence[dict[str, Any]], answers: np.ndarray, n_labels: int) -> dict[str, Any]:
    """Per-question log-likelihoods, predictions and accuracy from lm-eval's logged samples (each
    doc carries its question's index as ``row``), and the contexts lm-eval built."""
    n = len(answers)
    logprobs, contexts = np.full((n, n_labels), -np.inf), [""] * n
    for sample in samples:
        i = int(sample["doc"]["row"])
        logprobs[i] = [float(r[0]) for r in sample["filtered_resps"]]
        contexts[i] = sample["arguments"][0][0]
    pred = logprobs.argmax(-1)
    correct = (pred == answers).astype(float)
    return {
        "acc": float(correct.mean()) if n else float("nan"),
        "pred": pred.tolist(),
        "correct": correct.tolist(),
        "logprobs": logprobs,
        "contexts": contexts,
    }


def evaluate_tasks(
    model: nn.Module, tokenizer: Any, tasks: Sequence[MCTask], batch_size: int = 16
) -> dict[str, dict[str, Any]]:
    """Per task: ``acc``, per-question ``pred``/``correct``, ``logprobs [N, K]`` and the ``contexts``
    lm-eval built (to compare with :meth:`MCTask.contexts`)."""
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=context_limit(model))
    with tempfile.TemporaryDirectory(prefix="unlearn-lmeval-") as tmp:
        plan = {t.name: _task_configs(t, Path(tmp)) for t in tasks}
        configs = [cfg for entries in plan.values() for _, cfg, _ in entries]
        res = lm_eval.simple_evaluate(model=lm, tasks=configs, log_samples=True, bootstrap_iters=0, verbosity="WARNING")
    return {
        t.name: _collect([s for name, _, _ in plan[t.name] for s in res["samples"][name]], t.answers(), len(t.labels))
        for t in tasks
    }


def zero_shot_accuracy(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str],
    include_path: str | None = None,
    limit: int | None = None,
    batch_size: int = 16,
) -> tuple[dict[str, float], str | None]:
    """Zero-shot accuracy of the in-memory model on lm-eval tasks by name (``piqa``, ``arc_easy``,
    ``hellaswag``, ... or tasks defined in YAML files under ``include_path``).

    Returns ``({"zeroshot_<task>": acc, ..., "zeroshot_mean": mean}, None)``, or ``({}, why)`` when
    lm-eval is not installed or a task's data cannot be had (its built-in tasks read the hub): the
    utility number is then missing and the reason is recorded, never an exception (spec: Harry
    Potter's general tasks run "through lm-evaluation-harness when installed and online").
    """
    if not tasks:
        return {}, None
    try:
        lm_eval = _require_lm_eval()
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        return {}, f"general tasks skipped: {e}"
    try:
        manager = TaskManager(verbosity="ERROR", include_path=include_path)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=context_limit(model))
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=0,
            limit=limit,
            bootstrap_iters=0,
            task_manager=manager,
            verbosity="ERROR",
        )
    except Exception as e:  # offline hub, unknown task name, broken task file: recorded, not raised
        return {}, f"general tasks skipped ({', '.join(tasks)}): {type(e).__name__}: {str(e)[:300]}"
    metrics = {}
    for name in tasks:
        row = (res or {}).get("results", {}).get(name, {})
        acc = row.get("acc,none", row.get("acc"))
        if acc is None:
            return {}, f"general tasks skipped: lm-eval gave no accuracy for {name!r} (got {sorted(row)})"
        metrics[f"zeroshot_{name}"] = float(acc)
    metrics["zeroshot_mean"] = float(np.mean([metrics[f"zeroshot_{n}"] for n in tasks]))
    return metrics, None


def evaluate_contexts(
    model: nn.Module,
    tokenizer: Any,
    name: str,
    contexts: Sequence[str],
    answers: Sequence[int] | np.ndarray,
    labels: Sequence[str],
    add_special_tokens: bool = True,
    batch_size: int = 16,
) -> dict[str, Any]:
    """lm-eval scores the letters after prompts built here: each doc's ``doc_to_text`` is its whole
    context (few-shot examples of its own, a chat template), zero-shot. For sets lm-eval's few-shot
    sampler cannot express (RWKU's per-question examples, chat prompts); ``add_special_tokens=False``
    (a chat template that writes its own BOS) turns lm-eval's BOS off to match.

    Returns what :func:`evaluate_tasks` returns for one task.
    """
    lm_eval = _require_lm_eval()
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=batch_size,
        max_length=context_limit(model),
        add_bos_token=add_special_tokens,
    )
    with tempfile.TemporaryDirectory(prefix="unlearn-lmeval-") as tmp:
        docs = [
            {"prompt": c, "answer": int(a), "row": i} for i, (c, a) in enumerate(zip(contexts, answers, strict=True))
        ]
        task = f"unlearn_{name}"
        cfg = _mc_config(
            task, Path(tmp), {"test": _write_jsonl(Path(tmp) / f"{task}.jsonl", docs)}, "{{prompt}}", labels
        )
        res = lm_eval.simple_evaluate(model=lm, tasks=[cfg], log_samples=True, bootstrap_iters=0, verbosity="WARNING")
    return _collect(res["samples"][task], np.asarray(answers), len(labels))


def _own_prompts(task: MCTask, chat: PromptFormat | None) -> bool:
    """Whether lm-eval's task templates cannot express ``task``: a chat template, or few-shot
    examples that do not come from a dev split (RWKU's questions carry their own)."""
    if chat is not None and chat.chat:
        return True
    return task.shots is not None or any(r.get("examples") for r in task.rows)


@dataclass(frozen=True)  # stateless: repr, equality and hash by type
class LMEval:
    """lm-evaluation-harness as the multiple-choice backend (``pip install 'unlearn[lmeval]'``).

    A task lm-eval's templates express (plain prompts, few-shot examples from a dev split) runs as
    an lm-eval task, so lm-eval builds the prompts (:func:`evaluate_tasks`); one they cannot (chat
    prompts, questions with their own examples) is scored by lm-eval on the prompts built here
    (:func:`evaluate_contexts`).
    """

    def __call__(
        self,
        model: nn.Module,
        tokenizer: Any,
        tasks: Sequence[MCTask],
        batch_size: int = 16,
        chat: PromptFormat | None = None,
    ) -> dict[str, dict[str, Any]]:
        native = [t for t in tasks if not _own_prompts(t, chat)]
        out = evaluate_tasks(model, tokenizer, native, batch_size) if native else {}
        for t in tasks:
            if _own_prompts(t, chat):
                contexts, special = task_contexts(tokenizer, t, chat)
                out[t.name] = evaluate_contexts(
                    model, tokenizer, t.name, contexts, t.answers(), t.labels, special, batch_size
                )
        return {t.name: out[t.name] for t in tasks}
