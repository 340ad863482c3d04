"""harry_potter (copyright setting): the loader on an invented book (prompts cut from it or read
from a file), and the evaluator: completion BLEU/ROUGE known answers, perplexity, and collapse
reported as such, never raised."""

from __future__ import annotations

import copy
import json
import math
import time

import pytest
import torch
from _stubs import MemorizerLM
from conftest import REPO, job_config

from unlearn.benchmarks.harry_potter import HarryPotterData, book_prompts
from unlearn.benchmarks.hub import DataUnavailable
from unlearn.config import build
from unlearn.data.format import PromptFormat
from unlearn.evaluator import EvalContext

FIX = REPO / "tests" / "fixtures" / "harry_potter"
SMALL = ["benchmark.data.chunk_words=40", "benchmark.data.prompt_words=15", "benchmark.data.continuation_words=20"]


def _data(*overrides: str) -> HarryPotterData:
    return build(job_config(["benchmark=harry_potter", *SMALL, *overrides]), "benchmark.data")


@pytest.fixture(scope="module")
def splits():
    return _data(f"benchmark.data.local_dir={FIX}").build()


def test_loader_reads_the_book_prompts_and_general_text(splits):
    book = (FIX / "forget.txt").read_text()
    assert " ".join(r["text"] for r in splits["forget"]) == " ".join(book.split())
    assert all(len(r["text"].split()) <= 40 for r in splits["forget"] + splits["retain"] + splits["general"])
    assert len(splits["prompts"]) == 3 and set(splits["prompts"][0]) == {"id", "prompt", "continuation"}
    assert splits["general"][0]["text"].startswith("= Mossbridge Canal =")


def test_without_a_prompts_file_prompts_are_cut_evenly_from_the_book(tmp_path):
    paths = [
        f"benchmark.data.paths.{k}={FIX / f}"
        for k, f in (("forget", "forget.txt"), ("retain", "retain.jsonl"), ("general", "general.jsonl"))
    ]
    s = _data(*paths, "benchmark.data.n_prompts=200").build()
    words = (FIX / "forget.txt").read_text().split()
    assert len(s["prompts"]) == len(words) // 35  # fewer words than 200 windows of 15 + 20
    first = s["prompts"][0]
    assert first["prompt"] == " ".join(words[:15]) and first["continuation"] == " ".join(words[15:35])
    assert len(book_prompts([{"text": " ".join(words)}], 3, 15, 20)) == 3
    with pytest.raises(DataUnavailable, match="cannot hold one prompt"):
        book_prompts([{"text": "too short"}], 3, 15, 20)


def test_prompts_accept_muses_gt_field_and_name_a_missing_continuation(tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_text(json.dumps({"prompt": "Wren climbed", "gt": "to the attic"}) + "\n")
    s = _data(f"benchmark.data.local_dir={FIX}", f"benchmark.data.paths.prompts={p}").build()
    assert s["prompts"] == [{"id": "prompts-0", "prompt": "Wren climbed", "continuation": "to the attic"}]
    p.write_text(json.dumps({"prompt": "Wren climbed"}) + "\n")
    with pytest.raises(DataUnavailable, match=r"harry_potter prompts: row 0 has no field 'continuation'"):
        _data(f"benchmark.data.local_dir={FIX}", f"benchmark.data.paths.prompts={p}").build()


@pytest.mark.timeout(60)
def test_no_book_and_no_hub_fails_within_seconds_saying_how_to_give_it(offline_hub):
    start = time.perf_counter()
    with pytest.raises(
        DataUnavailable, match=r"harry_potter forget: cannot load muse-bench/MUSE-Books .*benchmark.data.paths.forget="
    ):
        _data().build()
    assert time.perf_counter() - start < 10


# -- evaluator ------------------------------------------------------------------------------------
def _evaluator(*overrides: str):
    return build(
        job_config(["benchmark=harry_potter", "benchmark.eval.max_new_tokens=32", *overrides]), "benchmark.eval"
    )


def test_a_model_that_recites_the_book_gets_full_bleu_and_rouge(tiny, splits):
    _, tok = tiny
    parrot = MemorizerLM(tok, {r["prompt"]: r["continuation"] for r in splits["prompts"]})
    m = _evaluator("benchmark.eval.max_ppl=1e9").evaluate(EvalContext(parrot, tok, PromptFormat(), splits))["metrics"]
    assert m["completion_bleu"] == pytest.approx(100.0) and m["completion_rouge"] == pytest.approx(1.0)
    assert m["general_ppl"] == pytest.approx(len(tok), rel=1e-3)  # uniform logits: perplexity = vocabulary size
    assert m["collapsed"] == 0.0 and m["repetition"] < 0.5


def test_the_tiny_model_gets_values_in_range(tiny, splits):
    model, tok = tiny
    rec = _evaluator("benchmark.eval.max_ppl=1e9").evaluate(EvalContext(model, tok, PromptFormat(), splits))
    m = rec["metrics"]
    assert 0 <= m["completion_bleu"] <= 100 and 0 <= m["completion_rouge"] <= 1 and 0 <= m["repetition"] <= 1
    assert 1 < m["general_ppl"] < 1e4 and 1 < m["forget_ppl"] < 1e4
    assert m["collapsed"] == 0.0 and rec["notes"]["collapse"] is None
    assert len(rec["arrays"]["completion_generated"]) == 3


@pytest.mark.parametrize(
    "how,reasons",
    [
        ("explode", {"ppl"}),  # confidently wrong: perplexity ~1e16
        ("overflow", {"ppl", "nonfinite"}),  # perplexity beyond floats: inf
        ("nan", {"ppl", "nonfinite"}),  # NaN weights
    ],
)
def test_a_collapsed_model_is_reported_not_raised(tiny, splits, how, reasons):
    model, tok = tiny
    broken = copy.deepcopy(model)
    with torch.no_grad():
        if how == "nan":
            for p in broken.parameters():
                p.fill_(float("nan"))
        else:
            broken.lm_head.weight.mul_(100.0 if how == "explode" else 1e4)
    rec = _evaluator().evaluate(EvalContext(broken, tok, PromptFormat(), splits))
    m = rec["metrics"]
    assert m["collapsed"] == 1.0 and {r for r in ("nonfinite", "ppl", "repetition") if m[f"collapsed_{r}"]} == reasons
    assert math.isinf(m["general_ppl"]) or m["general_ppl"] > len(tok)
    assert "perplexity" in rec["notes"]["collapse"]


def test_degenerate_repetition_counts_as_collapse(tiny, splits):
    _, tok = tiny
    m = _evaluator("benchmark.eval.max_ppl=1e9").evaluate(
        EvalContext(MemorizerLM(tok, repeat="the"), tok, PromptFormat(), splits)
    )["metrics"]
    assert (
        m["repetition"] > 0.9
        and m["collapsed"] == 1.0
        and m["collapsed_repetition"] == 1.0
        and m["collapsed_ppl"] == 0.0
    )


def test_the_perplexity_limit_is_the_vocabulary_or_relative_to_the_target(tiny):
    _, tok = tiny
    ev = _evaluator()
    assert ev.ppl_limit(tok, None) == len(tok)
    assert ev.ppl_limit(tok, {"metrics": {"general_ppl": 3.0}}) == 300.0
    assert _evaluator("benchmark.eval.max_ppl=50").ppl_limit(tok, None) == 50.0
    with pytest.raises(ValueError, match="max_repetition"):
        _evaluator("benchmark.eval.max_repetition=2")


def _general_task(folder, rows) -> str:
    """A local lm-eval task (zero-shot, 2 choices) in the YAML format lm-eval's own tasks use."""
    data = folder / "general.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "general_fixture.yaml").write_text(
        "task: unlearn_general_fixture\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {folder / 'cache'}\n"
        "test_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n"
    )
    return str(folder)


def _choice_logprob(model, tok, context: str, continuation: str) -> float:
    """log P(continuation | context) as lm-eval splits and scores it, computed here directly."""
    from unlearn.eval.choice import encode_pair

    ctx, cont = encode_pair(tok, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_zero_shot_general_tasks_run_through_lm_eval(tiny, splits, tmp_path):
    pytest.importorskip("lm_eval")
    model, tok = tiny
    words = " ".join(r["text"] for r in splits["forget"]).split()
    rows = [
        {
            "question": " ".join(words[i : i + 6]),
            "choices": [" ".join(words[i + 6 : i + 9]), " ".join(words[i + 20 : i + 23])],
        }
        for i in range(0, 60, 10)
    ]
    # the answer is the choice the model itself prefers, so a faithful zero-shot run scores 1 and
    # the other choice scores 0 (lm-eval puts " " between question and choice)
    best = [max((0, 1), key=lambda k: _choice_logprob(model, tok, r["question"], " " + r["choices"][k])) for r in rows]
    for answers, expected in ((best, 1.0), ([1 - b for b in best], 0.0)):
        (tmp_path / str(expected)).mkdir()
        folder = _general_task(
            tmp_path / str(expected), [dict(r, answer=a) for r, a in zip(rows, answers, strict=True)]
        )
        ev = _evaluator(
            "benchmark.eval.max_ppl=1e9",
            "benchmark.eval.general_tasks=[unlearn_general_fixture]",
            f"benchmark.eval.general_tasks_path={folder}",
        )
        rec = ev.evaluate(EvalContext(model, tok, PromptFormat(), splits))
        assert rec["notes"]["general_tasks"] is None
        assert rec["metrics"]["zeroshot_unlearn_general_fixture"] == expected == rec["metrics"]["zeroshot_mean"]
    assert ev.directions["zeroshot_mean"] == +1


def test_general_tasks_that_cannot_load_are_recorded_not_raised(tiny, splits):
    pytest.importorskip("lm_eval")
    model, tok = tiny
    ev = _evaluator("benchmark.eval.max_ppl=1e9", "benchmark.eval.general_tasks=[no_such_task_anywhere]")
    rec = ev.evaluate(EvalContext(model, tok, PromptFormat(), splits))
    assert "zeroshot_mean" not in rec["metrics"] and "no_such_task_anywhere" in rec["notes"]["general_tasks"]
    assert "completion_bleu" in rec["metrics"]
