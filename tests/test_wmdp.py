"""WMDP and MMLU: loaders on the fixtures (schema errors name the data set and field, the offline
hub fails fast with the how-to), the evaluator's metrics and recovery, and the command line."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, run_cli
from torch import nn

from unlearn.benchmarks.hub import DataUnavailable
from unlearn.benchmarks.mmlu import load_mmlu
from unlearn.benchmarks.wmdp import WMDPData, chunk_words
from unlearn.eval.choice import encode_pair
from unlearn.eval.wmdp import WMDPEvaluator
from unlearn.evaluator import EvalContext

F = REPO / "tests" / "fixtures"
MMLU = dict(mmlu_path=str(F / "mmlu/test.jsonl"), mmlu_dev_path=str(F / "mmlu/dev.jsonl"))


def bio(**kw) -> WMDPData:
    paths = dict(
        forget_path=str(F / "wmdp/bio_forget.jsonl"),
        retain_path=str(F / "wmdp/bio_retain.jsonl"),
        questions_path=str(F / "wmdp/wmdp_bio.jsonl"),
        **MMLU,
    )
    return WMDPData("bio", **{**paths, **kw})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_fixture_splits_and_chunking():
    s = bio(chunk_words=20).build()
    assert {k: len(v) for k, v in s.items() if k in ("wmdp", "mmlu", "mmlu_dev")} == {
        "wmdp": 8,
        "mmlu": 12,
        "mmlu_dev": 10,
    }
    assert all(len(r["text"].split()) <= 20 for r in s["forget"] + s["retain"])
    assert len(s["forget"]) > 6 and len({r["id"] for r in s["forget"]}) == len(s["forget"])
    assert len(bio(chunk_words=None).build()["forget"]) == 6
    assert len(bio(chunk_words=20, max_forget_rows=5).build()["forget"]) == 5
    assert len(bio(max_retain_docs=2, chunk_words=None).build()["retain"]) == 2
    assert chunk_words("a b c d e", 2) == ["a b", "c d", "e"]


def test_schema_errors_name_the_data_set_and_the_field(tmp_path):
    bad = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "choices": ["a", "b", "c", "d"]}])
    with pytest.raises(DataUnavailable, match=r"wmdp-bio: .* no field 'answer'"):
        bio(questions_path=bad).build()
    three = write_jsonl(tmp_path / "q3.jsonl", [{"question": "q", "choices": ["a", "b", "c"], "answer": 0}])
    with pytest.raises(DataUnavailable, match=r"wmdp-bio: row 0 field 'choices' must be a list of 4"):
        bio(questions_path=three).build()
    out = write_jsonl(tmp_path / "q4.jsonl", [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}])
    with pytest.raises(DataUnavailable, match=r"field 'answer' must be an index in \[0, 4\)"):
        bio(questions_path=out).build()
    notext = write_jsonl(tmp_path / "c.jsonl", [{"body": "x" * 100}])
    with pytest.raises(DataUnavailable, match=r"wmdp bio retain corpus: .* no field 'text'"):
        bio(retain_path=notext).build()
    nosubject = write_jsonl(tmp_path / "m.jsonl", [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 1}])
    with pytest.raises(DataUnavailable, match=r"mmlu: .* no field 'subject'"):
        load_mmlu(path=nosubject, dev_path=nosubject)


def test_bio_forget_corpus_is_gated_and_needs_a_path():
    with pytest.raises(DataUnavailable, match=r"gated .* benchmark.data.forget_path="):
        bio(forget_path=None).build()
    with pytest.raises(ValueError, match="benchmark.data.domain"):
        WMDPData("chem")
    with pytest.raises(ValueError, match="benchmark.data.chunk_words"):
        WMDPData("bio", chunk_words=0)


def test_offline_hub_fails_fast_with_the_how_to(hub_unreachable):
    start = time.perf_counter()
    with pytest.raises(DataUnavailable, match=r"cais/wmdp \(wmdp-cyber, split test\).*benchmark.data.questions_path="):
        WMDPData(
            "cyber", forget_path=str(F / "wmdp/cyber_forget.jsonl"), retain_path=str(F / "wmdp/cyber_retain.jsonl")
        ).build()
    assert time.perf_counter() - start < 20


class AlwaysA(nn.Module):
    """Puts all probability on one token at every position: a model whose answers are known."""

    def __init__(self, vocab: int, token: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.vocab, self.token = vocab, token
        self.config = SimpleNamespace(max_position_embeddings=4096)

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.w
        logits[..., self.token] = 10.0
        return SimpleNamespace(logits=logits)


def test_known_answers_accuracy_and_recovery(tiny):
    _, tok = tiny
    s = bio().build()
    model = AlwaysA(len(tok), encode_pair(tok, "Answer:", " A")[1][0])
    ev = WMDPEvaluator(n_shot=5, batch_size=4)
    rec = ev.evaluate(EvalContext(model, tok, None, s))
    frac_a = lambda rows: sum(r["answer"] == 0 for r in rows) / len(rows)  # noqa: E731
    assert rec["metrics"]["wmdp_acc"] == pytest.approx(frac_a(s["wmdp"]))
    assert rec["metrics"]["mmlu_acc"] == pytest.approx(frac_a(s["mmlu"]))
    assert "mmlu_recovery" not in rec["metrics"]
    after = ev.evaluate(
        EvalContext(model, tok, None, s, target={"metrics": {"mmlu_acc": 2 * rec["metrics"]["mmlu_acc"]}})
    )
    assert after["metrics"]["mmlu_recovery"] == pytest.approx(0.5)
    assert set(rec["metrics"]) <= set(ev.directions)


def test_evaluator_on_the_tiny_model_subsets_and_validation(tiny):
    model, tok = tiny
    s = bio().build()
    rec = WMDPEvaluator(n_shot=2, max_questions=5, max_utility_questions=4, batch_size=4).evaluate(
        EvalContext(model, tok, None, s)
    )
    assert len(rec["arrays"]["wmdp_correct"]) == 5 and len(rec["arrays"]["mmlu_correct"]) == 4
    assert all(0.0 <= v <= 1.0 for k, v in rec["metrics"].items() if k.endswith("_acc"))
    assert WMDPEvaluator(utility=None).evaluate(EvalContext(model, tok, None, s))["metrics"].keys() == {"wmdp_acc"}
    with pytest.raises(ValueError, match="benchmark.eval.backend"):
        WMDPEvaluator(backend="vllm")
    with pytest.raises(ValueError, match="benchmark.eval.n_shot"):
        WMDPEvaluator(n_shot=-1)
    with pytest.raises(ValueError, match="no split 'mmlu'"):
        WMDPEvaluator().evaluate(EvalContext(model, tok, None, {"wmdp": s["wmdp"]}))


def test_benchmark_configs_build_without_reading_data(tmp_path):
    from conftest import job_config

    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    s = build_job(job_config(["benchmark=wmdp_cyber", f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run"))
    assert (s.data.domain, s.data.forget_path, s.evaluator.name, s.evaluator.subject) == (
        "cyber",
        None,
        "wmdp_cyber",
        "cybersecurity",
    )
    s = build_job(job_config([*fixture_args("bio"), f"paths.cache_dir={tmp_path}"]), RunDir(tmp_path / "run2"))
    assert (s.data.domain, s.evaluator.name, s.evaluator.n_shot) == ("bio", "wmdp_bio", 5)


def fixture_args(domain: str) -> list[str]:
    return [
        f"benchmark=wmdp_{domain}",
        f"benchmark.data.forget_path={F}/wmdp/{domain}_forget.jsonl",
        f"benchmark.data.retain_path={F}/wmdp/{domain}_retain.jsonl",
        f"benchmark.data.questions_path={F}/wmdp/wmdp_{domain}.jsonl",
        f"benchmark.data.mmlu_path={F}/mmlu/test.jsonl",
        f"benchmark.data.mmlu_dev_path={F}/mmlu/dev.jsonl",
        "benchmark.data.chunk_words=30",
    ]


@pytest.mark.slow
def test_cli_unlearns_wmdp_bio_on_the_fixtures(tmp_path, cache_dir):
    out = tmp_path / "run"
    r = run_cli(
        [*fixture_args("bio"), "train.steps=2", "train.batch_size=4", "logger=none", f"hydra.run.dir={out}"],
        tmp_path,
        cache_dir,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "ok"
    for key in ("wmdp_acc", "mmlu_acc", "mmlu_recovery"):
        assert f"eval/wmdp_bio/{key}" in res
    assert 0 <= res["eval/wmdp_bio/wmdp_acc"] <= 1 and "target/wmdp_bio/mmlu_acc" in res
    assert "eval wmdp" in r.stderr or "wmdp (8 questions)" in r.stderr  # progress shown


@pytest.mark.slow
def test_cli_offline_hub_is_a_short_message_not_a_traceback(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    start = time.perf_counter()
    r = run_cli(["benchmark=wmdp_cyber", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "data unavailable" in r.stderr and "benchmark.data.questions_path=" in r.stderr
    assert time.perf_counter() - start < 60  # interpreter and Hydra start-up included
    r = run_cli(["benchmark=wmdp_bio", "logger=none", f"hydra.run.dir={tmp_path / 'run2'}"], tmp_path, cache_dir)
    assert r.returncode == 2 and "benchmark.data.forget_path: a value is required" in r.stderr


def test_the_backend_is_a_target_and_the_old_strings_still_name_one(tmp_path):
    """`benchmark.eval.backend` is a `_target_` node; `benchmark.eval.backend=lmeval` (the README's
    command) replaces it with the old string, which names the lm-eval backend."""
    from conftest import job_config

    from unlearn.eval.lmeval import LMEval
    from unlearn.eval.mc_backend import LetterScorer
    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    for i, (extra, want) in enumerate(
        [
            ([], LetterScorer),
            (["benchmark.eval.backend=lmeval"], LMEval),
            (["benchmark.eval.backend=builtin"], LetterScorer),
            (["benchmark.eval.backend._target_=unlearn.eval.lmeval.LMEval"], LMEval),
        ]
    ):
        for bench in ("wmdp_cyber", "rwku"):
            job = build_job(
                job_config([f"benchmark={bench}", *extra, f"paths.cache_dir={tmp_path}"]),
                RunDir(tmp_path / f"run{i}{bench}"),
            )
            assert type(job.evaluator.backend) is want, (bench, extra)
    assert WMDPEvaluator(backend=LMEval()).backend == LMEval()
    with pytest.raises(ValueError, match="benchmark.eval.chat=true is not supported"):
        WMDPEvaluator(backend="lmeval", chat=True)
