"""The embedded ``toy`` benchmark (spec: benchmarks.md, "toy").

A seeded generator of fictitious people, rendered as QA pairs and short biographies, with forget,
retain and holdout splits, paraphrased and perturbed answers, a 4-choice version of every
question, and a general-knowledge set (days, months, sums, opposites) as the utility probe. Small
enough to run the whole TOFU protocol on a laptop CPU in minutes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from unlearn.benchmarks.toy_world import (
    ATTRIBUTES,
    DAYS,
    FIRST_NAMES,
    GENERAL_TEMPLATES,
    LAST_NAMES,
    MONTHS,
    NUMBER_WORDS,
    OPPOSITES,
    article,
)

Row = dict[str, Any]


def _fill(template: str, name: str, v: str) -> str:
    return template.format(name=name, v=v, art=article(v))


def _capitalize(s: str) -> str:
    return s[:1].upper() + s[1:]


def _fill_fact(template: str, fact: dict[str, str], v: str) -> str:
    """A general-knowledge sentence about ``fact`` with ``v`` as its value (true or perturbed)."""
    return _capitalize(template.format(x=fact["x"], y=fact["y"], v=v))


def _qa_row(
    rid: str,
    question: str,
    answer: str,
    paraphrased: str,
    perturbed: list[str],
    choices_from: list[str],
    rng: random.Random,
    **extra: Any,
) -> Row:
    """A QA row in the TOFU schema plus a shuffled 4-choice version (choices in answer style)."""
    order = list(range(len(choices_from)))
    rng.shuffle(order)
    return {
        "id": rid,
        "question": question,
        "answer": answer,
        "paraphrased_answer": paraphrased,
        "perturbed_answer": perturbed,
        "choices": [choices_from[i] for i in order],
        "answer_index": order.index(0),
        **extra,
    }


@dataclass(frozen=True)
class ToyBenchmarkData:
    """Builds the toy splits; the same arguments always give the same rows.

    Splits (lists of row dicts): ``forget``/``retain``/``holdout`` QA rows of the forget (≈10%),
    retain and never-trained holdout people; ``forget_bio``/``retain_bio`` biography text rows;
    ``general`` QA rows and ``general_text`` rows of the general-knowledge probe.
    """

    seed: int = 0
    n_people: int = 50
    forget_fraction: float = 0.1
    n_holdout: int = 5
    n_perturbed: int = 3
    n_sums: int = 40

    def __post_init__(self) -> None:
        max_people = len(FIRST_NAMES) * len(LAST_NAMES)
        if not 2 <= self.n_people + self.n_holdout <= max_people:
            raise ValueError(
                f"benchmark.data.n_people + n_holdout must be in [2, {max_people}], "
                f"got {self.n_people + self.n_holdout}"
            )
        if not 0 < self.forget_fraction < 1:
            raise ValueError(f"benchmark.data.forget_fraction must be in (0, 1), got {self.forget_fraction!r}")
        if not 1 <= self.n_perturbed <= 3:
            raise ValueError(
                f"benchmark.data.n_perturbed must be in [1, 3] (4-choice questions), got {self.n_perturbed!r}"
            )

    def people(self) -> list[dict[str, str]]:
        rng = random.Random(self.seed)
        names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
        rng.shuffle(names)
        chosen = names[: self.n_people + self.n_holdout]
        out = []
        for name in chosen:
            person = {"name": name}
            for attr, (pool, *_rest) in ATTRIBUTES.items():
                person[attr] = rng.choice([v for v in pool if v != name.split()[0]])
            out.append(person)
        return out

    def _person_rows(self, person: dict[str, str], idx: int, rng: random.Random) -> tuple[list[Row], Row]:
        name = person["name"]
        rows, bio = [], []
        for attr, (pool, q, a, p) in ATTRIBUTES.items():
            v = person[attr]
            wrong = rng.sample([w for w in pool if w != v], 3)
            rows.append(
                _qa_row(
                    f"p{idx}-{attr}",
                    q.format(name=name),
                    _fill(a, name, v),
                    _fill(p, name, v),
                    [_fill(p, name, w) for w in wrong[: self.n_perturbed]],
                    [_fill(a, name, x) for x in [v, *wrong]],
                    rng,
                    person=name,
                    attribute=attr,
                )
            )
            bio.append(_fill(p, name, v))
        return rows, {"id": f"p{idx}-bio", "text": " ".join(bio), "person": name}

    def _general(self, rng: random.Random) -> tuple[list[Row], list[Row]]:
        facts: list[tuple[str, dict[str, str], list[str]]] = []
        for seq, kind in ((DAYS, "day"), (MONTHS, "month")):
            for i, x in enumerate(seq):
                v = seq[(i + 1) % len(seq)]
                facts.append((kind, {"x": x, "y": "", "v": v}, [w for w in seq if w not in (v, x)]))
        pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
        for a, b in rng.sample(pairs, min(self.n_sums, len(pairs))):
            v = NUMBER_WORDS[a + b]
            facts.append(
                ("sum", {"x": NUMBER_WORDS[a], "y": NUMBER_WORDS[b], "v": v}, [w for w in NUMBER_WORDS[2:] if w != v])
            )
        words = [w for pair in OPPOSITES for w in pair]
        for x, v in OPPOSITES:
            facts.append(("opposite", {"x": x, "y": "", "v": v}, [w for w in words if w not in (x, v)]))
        rows, text = [], []
        for i, (kind, f, pool) in enumerate(facts):
            q, a_tpl, p_tpl = GENERAL_TEMPLATES[kind]
            wrong = rng.sample(pool, 3)
            rows.append(
                _qa_row(
                    f"g{i}-{kind}",
                    q.format(x=f["x"], y=f["y"]),
                    _fill_fact(a_tpl, f, f["v"]),
                    _fill_fact(p_tpl, f, f["v"]),
                    [_fill_fact(p_tpl, f, w) for w in wrong[: self.n_perturbed]],
                    [_fill_fact(a_tpl, f, x) for x in [f["v"], *wrong]],
                    rng,
                    kind=kind,
                )
            )
            text.append(_fill_fact(p_tpl, f, f["v"]))
        chunks = [" ".join(text[i : i + 8]) for i in range(0, len(text), 8)]
        return rows, [{"id": f"gt{i}", "text": c} for i, c in enumerate(chunks)]

    def build(self) -> dict[str, list[Row]]:
        rng = random.Random(self.seed + 1)
        people = self.people()
        trained, holdout = people[: self.n_people], people[self.n_people :]
        n_forget = max(1, round(self.forget_fraction * self.n_people))
        splits: dict[str, list[Row]] = {
            k: [] for k in ("forget", "retain", "holdout", "forget_bio", "retain_bio", "holdout_bio")
        }
        for idx, person in enumerate(people):
            qa, bio = self._person_rows(person, idx, rng)
            split = "forget" if idx < n_forget else ("retain" if idx < len(trained) else "holdout")
            splits[split].extend(qa)
            splits[f"{split}_bio"].append(bio)
        splits["general"], splits["general_text"] = self._general(rng)
        del holdout
        return splits
