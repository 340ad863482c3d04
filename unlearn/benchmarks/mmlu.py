"""MMLU (Hendrycks et al., 2021): 4-choice questions in 57 subjects, the utility probe of WMDP.

Hub id ``cais/mmlu``, config ``all``: split ``test`` (14,042 questions) is evaluated, split ``dev``
(5 per subject) gives the 5-shot examples. Fields ``question``, ``subject``, ``choices`` (4) and
``answer`` (index). Rows are checked here so that a malformed file fails at load time, naming the
data set and the field, instead of deep inside the scorer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from unlearn.benchmarks.hub import DataUnavailable, Row, load_rows
from unlearn.rules import is_int

MC_FIELDS = ("question", "choices", "answer")


def check_mc(rows: Sequence[Row], dataset: str, n_choices: int = 4) -> list[Row]:
    """4-choice rows with an integer ``answer`` in range; returns plain copies with an ``id``."""
    out = []
    for i, r in enumerate(rows):
        choices = r["choices"]
        if not isinstance(choices, (list, tuple)) or len(choices) != n_choices:
            raise DataUnavailable(
                f"{dataset}: row {i} field 'choices' must be a list of {n_choices} strings, got {choices!r}"
            )
        answer = r["answer"]
        if isinstance(answer, str) and answer.strip().upper() in "ABCD" and len(answer.strip()) == 1:
            answer = "ABCD".index(answer.strip().upper())  # some copies store the letter
        if not is_int(answer) or not 0 <= answer < n_choices:
            raise DataUnavailable(
                f"{dataset}: row {i} field 'answer' must be an index in [0, {n_choices}), got {r['answer']!r}"
            )
        out.append(
            {**r, "choices": [str(c) for c in choices], "answer": int(answer), "id": str(r.get("id", f"{dataset}-{i}"))}
        )
    return out


def load_mc(
    dataset: str,
    hub_id: str | None,
    config: str | None,
    split: str,
    path: str | None,
    path_key: str,
    extra: Sequence[str] = (),
) -> list[Row]:
    """A multiple-choice split from a local file or the hub, schema-checked."""
    rows = load_rows(
        dataset, hub_id, config=config, split=split, path=path, required=(*MC_FIELDS, *extra), path_key=path_key
    )
    return check_mc(rows, dataset)


def load_mmlu(
    hub_id: str | None = "cais/mmlu",
    config: str = "all",
    path: str | None = None,
    dev_path: str | None = None,
    split: str = "test",
    dev_split: str = "dev",
    key: str = "benchmark.data",
) -> dict[str, list[Row]]:
    """``{"mmlu": test rows, "mmlu_dev": few-shot rows}``; both need ``subject`` (5-shot per subject).

    ``path``/``dev_path`` are local copies (JSONL, JSON, CSV, Parquet or a ``datasets`` folder);
    a ``datasets`` folder saved from the whole data set serves both (give it as ``path`` only).
    """
    if path and not dev_path:
        if not Path(path).expanduser().is_dir():
            raise DataUnavailable(
                f"mmlu: {key}.mmlu_path is a file, so {key}.mmlu_dev_path must name the dev split "
                "(the 5-shot examples per subject)"
            )
        dev_path = path  # a saved DatasetDict holds both splits
    test = load_mc("mmlu", hub_id, config, split, path, f"{key}.mmlu_path", extra=("subject",))
    dev = load_mc("mmlu dev", hub_id, config, dev_split, dev_path, f"{key}.mmlu_dev_path", extra=("subject",))
    return {"mmlu": test, "mmlu_dev": dev}


def subjects(rows: Sequence[Row]) -> list[str]:
    return sorted({str(r.get("subject", "")) for r in rows})
