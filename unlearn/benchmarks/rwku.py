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
batch scripts do). Metrics: :class:`unlearn.eval.rwku.RWKUEvaluator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from unlearn.benchmarks.hub import DataUnavailable, Row, load_rows
from unlearn.benchmarks.mmlu import check_mc
from unlearn.eval.rwku import PROBES

PROBE_FIELDS = ("subject", "query", "answer")


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
        raise DataUnavailable(
            f"rwku {config}: benchmark.data.path={self.path} has no {config}.jsonl (or .json/.parquet); "
            "it needs one file per RWKU config"
        )

    def _load(self, config: str, required: Sequence[str]) -> list[Row]:
        split = "train" if config == "forget_target" or config.startswith("train_") else "test"
        return load_rows(
            f"rwku {config}",
            self.hub_id,
            config=config,
            split=split,
            path=self._file(config),
            required=required,
            path_key="benchmark.data.path",
        )

    def people(self) -> tuple[list[str], list[str]]:
        """Names of the forget targets and of the retain targets."""
        names = [str(r["target"]) for r in self._load("forget_target", ["target"])]
        forget = parse_targets(self.targets, "benchmark.data.targets")
        if max(forget) > len(names):
            raise DataUnavailable(
                f"rwku: benchmark.data.targets goes up to {max(forget)} but forget_target has {len(names)} targets"
            )
        chosen = [names[i - 1] for i in forget]
        if self.retain_targets is not None:
            retain = [
                names[i - 1]
                for i in parse_targets(self.retain_targets, "benchmark.data.retain_targets")
                if i <= len(names)
            ]
        else:
            retain = [n for n in names if n not in chosen][-len(chosen) :]
        if set(chosen) & set(retain):
            raise ValueError(
                f"benchmark.data.retain_targets overlaps the forget targets: {sorted(set(chosen) & set(retain))}"
            )
        return chosen, retain

    def build(self) -> dict[str, list[Row]]:
        forget, retain = self.people()
        keep = set(forget)
        passages = self._load(self.corpus, ["subject", "text"])

        def text(rows: Sequence[Row], who: set[str], tag: str) -> list[Row]:
            return [
                {"id": f"{tag}-{i}", "text": str(r["text"]), "subject": r["subject"]}
                for i, r in enumerate(rows)
                if r["subject"] in who
            ]

        splits: dict[str, list[Row]] = {
            "forget": text(passages, keep, "forget"),
            "retain": text(passages, set(retain), "retain"),
        }
        for config in PROBES:
            rows = self._load(config, PROBE_FIELDS)
            splits[config] = [
                {
                    "id": f"{config}-{i}",
                    "query": str(r["query"]),
                    "answer": str(r["answer"]),
                    "subject": r["subject"],
                    "type": r.get("type"),
                }
                for i, r in enumerate(rows)
                if r["subject"] in keep
            ]
        for config in ("mia_forget", "mia_retain"):
            splits[config] = text(self._load(config, ["subject", "text"]), keep, config)
        utility = [
            r
            for r in self._load("utility_general", ["subject", "question", "choices", "answer"])
            if r["subject"] in keep
        ]
        splits["utility_general"] = check_mc([_mmlu_row(r) for r in utility], "rwku utility_general") if utility else []
        empty = [k for k, v in splits.items() if not v and k != "utility_general"]
        if empty:
            raise DataUnavailable(
                f"rwku: no rows for the chosen targets in {empty} "
                f"(targets: {forget[:5]}{'…' if len(forget) > 5 else ''})"
            )
        return splits


def _mmlu_row(r: Row) -> Row:
    """RWKU keeps the MMLU subject in ``task`` and the target in ``subject``; MCTask wants the
    MMLU subject in ``subject``."""
    examples = [
        {"question": e["question"], "choices": list(e["choices"]), "answer": int(e["answer"])}
        for e in (r.get("examples") or [])
    ]
    return {
        "question": r["question"],
        "choices": list(r["choices"]),
        "answer": r["answer"],
        "subject": r.get("task") or "",
        "target": r["subject"],
        "examples": examples,
    }
