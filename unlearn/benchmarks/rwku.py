"""RWKU (Jin et al., 2024): unlearn real-world people, probed at three levels, in the batch setting.

Hub id ``jinzhuoran/RWKU`` (or a local folder with one ``<config>.jsonl``/``.json`` file per
config). Configs and fields used:

- ``forget_target`` (split ``train``): ``target``, the 200 people in the benchmark's order;
- ``train_original_passage`` (``train``): ``subject``, ``text``: the training passages per target;
- ``forget_level1/2/3``, ``neighbor_level1/2`` (``test``): ``subject``, ``query``, ``answer``
  (level 3 adds the attack ``type``);
- ``mia_forget``, ``mia_retain`` (``test``): ``subject``, ``text``;
- ``utility_general`` (``test``): MMLU-style ``question``, ``choices``, ``answer``, ``task`` (the
  MMLU subject), ``examples`` (its few-shot examples) and ``subject`` (the target it belongs to).

Batch setting: ``targets`` (1-based positions, default 1–50) are forgotten together; the retain
rows are the passages of other targets (the last as many targets as are forgotten, as RWKU's
batch scripts do). Metrics (``RWKUEvaluator``): ROUGE-L recall of greedy answers on forget levels
1–3 (lower is better) and neighbour levels 1–2 (higher; their mean is ``neighbor_all``), MIA AUCs
(loss, zlib, Min-K%, Min-K%++) of forget against retain members, MMLU-style utility accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch import nn

from unlearn.benchmarks.hub import DataUnavailable, Row, load_rows
from unlearn.benchmarks.mmlu import check_mc
from unlearn.benchmarks.wmdp import subsample
from unlearn.data.format import PromptFormat
from unlearn.eval import metrics as M
from unlearn.eval.choice import MCTask, evaluate_task, task_contexts
from unlearn.eval.generate import greedy
from unlearn.eval.mia import attack_aucs, attack_scores
from unlearn.eval.scoring import score_texts
from unlearn.utils.progress import Steps

PROBES = ("forget_level1", "forget_level2", "forget_level3", "neighbor_level1", "neighbor_level2")
PROBE_FIELDS = ("subject", "query", "answer")
BLANK = "Please complete the blank in the following question.\nQuestion: {query}\n"
BRIEF = "Please briefly answer the following question.\nQuestion: {query}\n"


def parse_targets(spec: Any, key: str) -> list[int]:
    """``"1-50"``, ``"3"``, ``[1, 2, 7]`` or ``"1-5,9"`` → sorted 1-based positions."""
    parts = list(spec) if isinstance(spec, Sequence) and not isinstance(spec, str) else str(spec).split(",")
    out: set[int] = set()
    try:
        for p in parts:
            if isinstance(p, str) and "-" in p.strip()[1:]:
                a, b = p.split("-", 1)
                out.update(range(int(a), int(b) + 1))
            else:
                out.add(int(p))
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be positions like 1-50, [1, 2, 3] or 1-5,9, got {spec!r}") from None
    if not out or min(out) < 1:
        raise ValueError(f"{key} must name positions >= 1, got {spec!r}")
    return sorted(out)


@dataclass(frozen=True)
class RWKUData:
    """Builds ``forget``/``retain`` passages, the five probe sets, the MIA sets and ``utility_general``
    for the chosen ``targets`` (see module docstring)."""

    targets: Any = "1-50"
    retain_targets: Any = None
    hub_id: str | None = "jinzhuoran/RWKU"
    path: str | None = None
    corpus: str = "train_original_passage"
    seed: int = 0

    def __post_init__(self) -> None:
        parse_targets(self.targets, "benchmark.data.targets")
        if self.retain_targets is not None:
            parse_targets(self.retain_targets, "benchmark.data.retain_targets")

    def _file(self, config: str) -> str | None:
        if self.path is None:
            return None
        folder = Path(self.path).expanduser()
        for suffix in (".jsonl", ".json", ".parquet"):
            if (folder / f"{config}{suffix}").exists():
                return str(folder / f"{config}{suffix}")
        if not folder.is_dir():
            raise DataUnavailable(f"rwku: benchmark.data.path={self.path} is not a folder")
        raise DataUnavailable(f"rwku {config}: benchmark.data.path={self.path} has no {config}.jsonl (or .json/.parquet); it needs one file per RWKU config")

    def _load(self, config: str, required: Sequence[str]) -> list[Row]:
        split = "train" if config == "forget_target" or config.startswith("train_") else "test"
        return load_rows(f"rwku {config}", self.hub_id, config=config, split=split, path=self._file(config), required=required, path_key="benchmark.data.path")

    def people(self) -> tuple[list[str], list[str]]:
        """Names of the forget targets and of the retain targets."""
        names = [str(r["target"]) for r in self._load("forget_target", ["target"])]
        forget = parse_targets(self.targets, "benchmark.data.targets")
        if max(forget) > len(names):
            raise DataUnavailable(f"rwku: benchmark.data.targets goes up to {max(forget)} but forget_target has {len(names)} targets")
        chosen = [names[i - 1] for i in forget]
        if self.retain_targets is not None:
            retain = [names[i - 1] for i in parse_targets(self.retain_targets, "benchmark.data.retain_targets") if i <= len(names)]
        else:
            retain = [n for n in names if n not in chosen][-len(chosen):]
        if set(chosen) & set(retain):
            raise ValueError(f"benchmark.data.retain_targets overlaps the forget targets: {sorted(set(chosen) & set(retain))}")
        return chosen, retain

    def build(self) -> dict[str, list[Row]]:
        forget, retain = self.people()
        keep = set(forget)
        passages = self._load(self.corpus, ["subject", "text"])
        text = lambda rows, who, tag: [{"id": f"{tag}-{i}", "text": str(r["text"]), "subject": r["subject"]} for i, r in enumerate(rows) if r["subject"] in who]  # noqa: E731
        splits: dict[str, list[Row]] = {"forget": text(passages, keep, "forget"), "retain": text(passages, set(retain), "retain")}
        for config in PROBES:
            rows = self._load(config, PROBE_FIELDS)
            splits[config] = [{"id": f"{config}-{i}", "query": str(r["query"]), "answer": str(r["answer"]), "subject": r["subject"], "type": r.get("type")} for i, r in enumerate(rows) if r["subject"] in keep]
        for config in ("mia_forget", "mia_retain"):
            splits[config] = text(self._load(config, ["subject", "text"]), keep, config)
        utility = [r for r in self._load("utility_general", ["subject", "question", "choices", "answer"]) if r["subject"] in keep]
        splits["utility_general"] = check_mc([_mmlu_row(r) for r in utility], "rwku utility_general") if utility else []
        empty = [k for k, v in splits.items() if not v and k != "utility_general"]
        if empty:
            raise DataUnavailable(f"rwku: no rows for the chosen targets in {empty} (targets: {forget[:5]}{'…' if len(forget) > 5 else ''})")
        return splits


def _mmlu_row(r: Row) -> Row:
    """RWKU keeps the MMLU subject in ``task`` and the target in ``subject``; MCTask wants the
    MMLU subject in ``subject``."""
    examples = [{"question": e["question"], "choices": list(e["choices"]), "answer": int(e["answer"])} for e in (r.get("examples") or [])]
    return {"question": r["question"], "choices": list(r["choices"]), "answer": r["answer"], "subject": r.get("task") or "", "target": r["subject"], "examples": examples}


# -- evaluation --------------------------------------------------------------------------------
def probe_body(row: Row, level: str) -> tuple[str, str]:
    """RWKU's instruction for a probe and the suffix after it (``"Answer:"`` except for the
    affirmative-suffix attack, whose query ends in its own lead-in)."""
    q = row["query"]
    if level.endswith("level1"):
        return BLANK.format(query=q), "Answer:"
    kind = row.get("type") if level == "forget_level3" else None
    if kind == "affirmative suffix":
        return BRIEF.format(query=q).rstrip("\n"), ""
    if kind == "incontext learning":
        return f"Please briefly answer the following question.\n{q}\n", "Answer:"
    return BRIEF.format(query=q), "Answer:"


def probe_prompt(row: Row, level: str, fmt: PromptFormat, tokenizer: Any) -> str:
    """The probe as the model sees it: a chat turn (instruction-tuned models) or plain text."""
    body, suffix = probe_body(row, level)
    return (fmt.prompt(body, tokenizer) if fmt.chat else body) + suffix


DIRECTIONS = {
    "forget_level1": -1, "forget_level2": -1, "forget_level3": -1, "forget_all": -1,
    "neighbor_level1": +1, "neighbor_level2": +1, "neighbor_all": +1,
    "mia_loss_auc": -1, "mia_zlib_auc": -1, "mia_min_k_auc": -1, "mia_min_k_pp_auc": -1,
    "mia_forget_loss": +1, "mia_retain_loss": -1, "utility_general_acc": +1,
}


@dataclass
class RWKUEvaluator:
    """RWKU's forget, neighbour, MIA and utility metrics (see module docstring).

    MIA AUCs score forget members as positives against retain members: about 0.5 before unlearning
    (both were seen in pre-training), lower once the forget texts look unseen. ``mia_*_loss`` are
    the mean token NLLs of each set (RWKU's FM ↑ and RM ↓). ``max_probes`` evaluates a seeded subset
    of each probe set for quick runs.
    """

    name: str = "rwku"
    utility: str | None = "utility_general"
    n_shot: int = 5
    max_new_tokens: int = 30
    max_probes: int | None = None
    max_length: int = 512
    min_k: float = 0.2
    batch_size: int = 16
    seed: int = 0
    backend: str = "builtin"  # utility set: builtin letter scorer | lmeval (lm-evaluation-harness)
    directions: dict[str, int] = field(default_factory=lambda: dict(DIRECTIONS))

    def __post_init__(self) -> None:
        if self.backend not in ("builtin", "lmeval"):
            raise ValueError(f"benchmark.eval.backend must be 'builtin' or 'lmeval', got {self.backend!r}")
        if not 0 < self.min_k <= 1:
            raise ValueError(f"benchmark.eval.min_k must be in (0, 1], got {self.min_k!r}")
        if self.max_probes is not None and (isinstance(self.max_probes, bool) or not isinstance(self.max_probes, int) or self.max_probes < 1):
            raise ValueError(f"benchmark.eval.max_probes must be a positive integer or null, got {self.max_probes!r}")

    def _probes(self, model: nn.Module, tok: Any, fmt: PromptFormat, rows: Sequence[Row], level: str) -> tuple[float, list[str]]:
        rows = subsample(rows, self.max_probes, self.seed)
        if not rows:
            return float("nan"), []
        prompts = [probe_prompt(r, level, fmt, tok) for r in rows]
        answers = greedy(model, tok, prompts, self.max_new_tokens, self.batch_size, stop=("\n",), add_special_tokens=not fmt.chat)
        # RWKU's eval_forget.py: ROUGE-L recall of the `rouge` package (no stemming), an empty answer
        # scored as "NOANSWER"; rouge-score without its stemmer is that up to tokenisation (it also
        # lower-cases and drops punctuation, which `rouge` keeps)
        hyps = [a if a.strip() else "NOANSWER" for a in answers]
        return float(np.mean(M.rouge_l(hyps, [r["answer"] for r in rows], "recall", use_stemmer=False))), answers

    def _mia(self, model: nn.Module, tok: Any, splits: Mapping[str, Sequence[Row]]) -> dict[str, float]:
        scores, out = {}, {}
        for s in ("mia_forget", "mia_retain"):
            texts = [r["text"] for r in splits[s]]
            sc = score_texts(model, tok, texts, self.max_length, self.batch_size, minkpp=True)
            scores[s] = attack_scores(sc, texts, self.min_k)
            out[f"{s}_loss"] = float(np.mean(sc.nll_sum / np.maximum(sc.n_tokens, 1)))
        out.update({f"mia_{k}_auc": v for k, v in attack_aucs(scores["mia_forget"], scores["mia_retain"]).items()})
        return out

    def utility_accuracy(self, model: nn.Module, tokenizer: Any, fmt: PromptFormat, rows: Sequence[Row]) -> dict[str, Any]:
        """The MMLU-style utility set, each question with its own few-shot examples (RWKU's), in the
        chat template for chat models; scored by the letter scorer or by lm-evaluation-harness on
        the same prompts."""
        task = MCTask(self.utility or "utility", rows, n_shot=self.n_shot)
        chat = fmt if fmt.chat else None
        if self.backend == "builtin":
            return evaluate_task(model, tokenizer, task, self.batch_size, chat)
        from unlearn.eval.lmeval import evaluate_contexts

        contexts, special = task_contexts(tokenizer, task, chat)
        return evaluate_contexts(model, tokenizer, task.name, contexts, task.answers(), task.labels, special, self.batch_size)

    def evaluate(self, model: nn.Module, tokenizer: Any, fmt: PromptFormat, splits: Mapping[str, Sequence[Row]], oracle: Mapping[str, Any] | None = None) -> dict[str, Any]:
        needed = [*PROBES, "mia_forget", "mia_retain"] + ([self.utility] if self.utility else [])
        missing = [s for s in needed if s not in splits]
        if missing:
            raise ValueError(f"benchmark {self.name!r} has no split(s) {missing} to evaluate (splits: {sorted(splits)})")
        metrics: dict[str, float] = {}
        arrays: dict[str, Any] = {}
        with Steps(f"eval {self.name}", total=len(PROBES) + 2) as steps:
            for level in PROBES:
                metrics[level], arrays[f"{level}_generated"] = self._probes(model, tokenizer, fmt, splits[level], level)
                steps.advance(level)
            metrics.update(self._mia(model, tokenizer, splits))
            steps.advance("membership inference")
            if self.utility and splits[self.utility]:
                metrics[f"{self.utility}_acc"] = self.utility_accuracy(model, tokenizer, fmt, splits[self.utility])["acc"]
            steps.advance("utility")
        metrics["forget_all"] = float(np.nanmean([metrics[f"forget_level{i}"] for i in (1, 2, 3)]))
        metrics["neighbor_all"] = float(np.nanmean([metrics["neighbor_level1"], metrics["neighbor_level2"]]))
        return {"metrics": metrics, "arrays": arrays}
