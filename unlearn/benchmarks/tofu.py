"""TOFU (Maini et al., 2024, "TOFU: A Task of Fictitious Unlearning for LLMs"): 200 fictitious
authors with 20 QA pairs each, hub id ``locuslab/TOFU``.

The forget split ``forget01|forget05|forget10`` (the last 1/5/10% of the authors) fixes the matching
retain split (``retain99|95|90``) and the forget evaluation set (``<split>_perturbed``). The
evaluation sets carry a paraphrased answer and perturbed (wrong) answers; ``real_authors`` and
``world_facts`` are the utility sets, on which TOFU normalises the answer probability over the
options and compares the true answer (not a paraphrase) with the perturbed ones. ``holdout``
(``holdout01|05|10``, matching the forget split's size: authors never trained on) is the
non-member side of the membership-inference attack, as in open-unlearning's TOFU evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from unlearn.benchmarks.hub import DataUnavailable
from unlearn.benchmarks.sources import Part, check_paths, read_part

Row = dict[str, Any]

#: forget split -> the retain split that complements it
RETAIN_OF = {"forget01": "retain99", "forget05": "retain95", "forget10": "retain90"}
QA = ("question", "answer")
PERTURBED = (*QA, "paraphrased_answer", "perturbed_answer")


def tofu_parts(split: str) -> list[Part]:
    """The TOFU tables a run needs, keyed by their role here."""
    retain = RETAIN_OF[split]
    return [
        Part("forget", split, "train", split, QA),
        Part("retain", retain, "train", retain, QA),
        Part("forget_perturbed", f"{split}_perturbed", "train", f"{split}_perturbed", PERTURBED),
        Part("retain_perturbed", "retain_perturbed", "train", "retain_perturbed", PERTURBED),
        Part("real_authors", "real_authors_perturbed", "train", "real_authors_perturbed", (*QA, "perturbed_answer")),
        Part("world_facts", "world_facts_perturbed", "train", "world_facts_perturbed", (*QA, "perturbed_answer")),
        Part("full", "full", "train", "full", QA),
        Part("holdout", split.replace("forget", "holdout"), "train", split.replace("forget", "holdout"), QA),
    ]


def _check_perturbed(rows: list[Row], part: str) -> None:
    for i, r in enumerate(rows):
        p = r.get("perturbed_answer")
        if not isinstance(p, list) or not p or not all(isinstance(a, str) for a in p):
            raise DataUnavailable(
                f"tofu {part}: row {i} field 'perturbed_answer' must be a non-empty list of strings, got {p!r}"
            )


@dataclass(frozen=True)
class TofuData:
    """Loads the TOFU splits for one forget split; ``build()`` returns ``{part: rows}`` with parts
    ``forget``, ``retain`` (training), ``forget_perturbed``, ``retain_perturbed``, ``real_authors``,
    ``world_facts``, ``holdout`` (evaluation) and ``full`` (the target model's fine-tuning set)."""

    split: str = "forget10"
    hub_id: str | None = "locuslab/TOFU"
    local_dir: str | None = None
    paths: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in RETAIN_OF:
            raise ValueError(f"benchmark.split must be one of {sorted(RETAIN_OF)}, got {self.split!r}")
        check_paths(self.paths, tofu_parts(self.split), "tofu")

    def build(self) -> dict[str, list[Row]]:
        paths = check_paths(self.paths, tofu_parts(self.split), "tofu")
        splits = {p.key: read_part("tofu", self.hub_id, p, paths, self.local_dir) for p in tofu_parts(self.split)}
        for key in ("forget_perturbed", "retain_perturbed", "real_authors", "world_facts"):
            _check_perturbed(splits[key], key)
        return splits
