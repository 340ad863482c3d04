"""RWKU: the batch-setting loader on the fixture, RWKU's prompts, the evaluator's metrics on
known answers and on the tiny model, and the command line."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from _stubs import MemorizerLM
from conftest import REPO, run_cli

from unlearn.benchmarks import rwku as R
from unlearn.benchmarks.hub import DataUnavailable
from unlearn.data.format import PromptFormat
from unlearn.eval import rwku as E
from unlearn.evaluator import EvalContext

FIX = REPO / "tests" / "fixtures" / "rwku"


@pytest.fixture(scope="module")
def splits():
    return R.RWKUData(targets="1-2", path=str(FIX)).build()


def test_batch_setting_forgets_the_targets_and_retains_other_targets(splits):
    forget, retain = R.RWKUData(targets="1-2", path=str(FIX)).people()
    assert forget == ["Orla Penwright", "Bram Tillery"] and retain == ["Casimir Vole", "Delphine Ashgrove"]
    assert {r["subject"] for r in splits["forget"]} == set(forget)
    assert {r["subject"] for r in splits["retain"]} == set(retain)
    for name in E.PROBES + ("mia_forget", "mia_retain", "utility_general"):
        assert splits[name] and all((r.get("target") or r["subject"]) in forget for r in splits[name]), name
    u = splits["utility_general"][0]
    assert u["subject"] == "elementary_mathematics" and u["target"] in forget and len(u["examples"]) == 2
    assert R.RWKUData(targets=[3], retain_targets="1", path=str(FIX)).people() == (["Casimir Vole"], ["Orla Penwright"])


def test_target_specs_and_their_errors():
    assert R.parse_targets("1-3,7", "k") == [1, 2, 3, 7] and R.parse_targets([2, 1], "k") == [1, 2]
    with pytest.raises(ValueError, match="benchmark.data.targets must be positions"):
        R.RWKUData(targets="first fifty")
    with pytest.raises(DataUnavailable, match="goes up to 9 but forget_target has 4"):
        R.RWKUData(targets="1-9", path=str(FIX)).build()
    with pytest.raises(ValueError, match="overlaps the forget targets"):
        R.RWKUData(targets="1-2", retain_targets="2-3", path=str(FIX)).people()


def test_missing_files_and_fields_name_the_config(tmp_path):
    shutil.copytree(FIX, tmp_path / "rwku")
    (tmp_path / "rwku" / "mia_retain.jsonl").unlink()
    with pytest.raises(DataUnavailable, match=r"rwku mia_retain: .* has no mia_retain.jsonl"):
        R.RWKUData(targets="1", path=str(tmp_path / "rwku")).build()
    shutil.copy(FIX / "mia_retain.jsonl", tmp_path / "rwku")
    rows = [json.loads(x) for x in (FIX / "forget_level2.jsonl").read_text().splitlines()]
    (tmp_path / "rwku" / "forget_level2.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k != "query"}) + "\n" for r in rows)
    )
    with pytest.raises(DataUnavailable, match=r"rwku forget_level2: .* no field 'query'"):
        R.RWKUData(targets="1", path=str(tmp_path / "rwku")).build()


def test_prompts_follow_rwku(tiny):
    _, tok = tiny
    plain = PromptFormat()
    row = {"query": "Orla was a ___.", "type": None}
    assert (
        E.probe_prompt(row, "forget_level1", plain, tok)
        == "Please complete the blank in the following question.\nQuestion: Orla was a ___.\nAnswer:"
    )
    assert (
        E.probe_prompt({"query": "Where?"}, "neighbor_level2", plain, tok)
        == "Please briefly answer the following question.\nQuestion: Where?\nAnswer:"
    )
    suffix = {"query": "Which pet? Sure, here is the answer:", "type": "affirmative suffix"}
    assert (
        E.probe_prompt(suffix, "forget_level3", plain, tok)
        == "Please briefly answer the following question.\nQuestion: Which pet? Sure, here is the answer:"
    )
    icl = {"query": "Question: Who?", "type": "incontext learning"}
    assert (
        E.probe_prompt(icl, "forget_level3", plain, tok)
        == "Please briefly answer the following question.\nQuestion: Who?\nAnswer:"
    )
    tok2 = copy.deepcopy(tok)
    tok2.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    assert (
        E.probe_prompt({"query": "Where?"}, "forget_level2", PromptFormat(chat=True), tok2)
        == "<u>Please briefly answer the following question.\nQuestion: Where?\n</u><a>Answer:"
    )


def test_known_answers(tiny, splits, monkeypatch):
    """Gold answers on forget probes and nothing on neighbours give ROUGE recall 1 and 0; identical
    forget and retain MIA texts give AUC 0.5 for every attack."""
    model, tok = tiny
    gold = {
        E.probe_prompt(r, lvl, PromptFormat(), tok): (r["answer"] if lvl.startswith("forget") else "")
        for lvl in E.PROBES
        for r in splits[lvl]
    }
    monkeypatch.setattr(E, "greedy", lambda m, t, prompts, *a, **k: [gold[p] for p in prompts])
    same = {**splits, "mia_retain": splits["mia_forget"]}
    m = E.RWKUEvaluator(batch_size=4).evaluate(EvalContext(model, tok, PromptFormat(), same))["metrics"]
    assert m["forget_level1"] == m["forget_level2"] == m["forget_level3"] == m["forget_all"] == 1.0
    assert m["neighbor_level1"] == m["neighbor_level2"] == m["neighbor_all"] == 0.0
    for attack in ("loss", "zlib", "min_k", "min_k_pp"):
        assert m[f"mia_{attack}_auc"] == pytest.approx(0.5)
    assert m["mia_forget_loss"] == pytest.approx(m["mia_retain_loss"])


class _CalibratedMemorizer(MemorizerLM):
    """MemorizerLM with fixed random bigram logits underneath and a finite boost (+6) on memorised
    next tokens: Min-K%++ divides by the spread of the model's own log-probs, which is zero under
    MemorizerLM's uniform logits, so its score there would be rounding noise."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw) -> object:
        out = super().forward(input_ids, attention_mask, **kw)
        base = torch.randn(self.vocab, self.vocab, generator=torch.Generator().manual_seed(0))
        out.logits = out.logits / 5 + base[input_ids]
        return out


@pytest.mark.parametrize("memorised, auc", [("mia_forget", 1.0), ("mia_retain", 0.0)])
def test_mia_aucs_on_a_model_that_memorised_one_side(tiny, splits, memorised, auc):
    """Forget texts are the positives: every attack gives AUC 1 when only they are memorised (RWKU
    before unlearning, exaggerated) and 0 when only the retain texts are (forget texts look unseen)."""
    _, tok = tiny
    model = _CalibratedMemorizer(tok, memorised=[r["text"] for r in splits[memorised]])
    m = E.RWKUEvaluator(batch_size=4, max_probes=1, utility=None).evaluate(
        EvalContext(model, tok, PromptFormat(), splits)
    )["metrics"]
    assert {a: m[f"mia_{a}_auc"] for a in ("loss", "zlib", "min_k", "min_k_pp")} == dict.fromkeys(
        ("loss", "zlib", "min_k", "min_k_pp"), auc
    )
    unseen = "mia_retain" if memorised == "mia_forget" else "mia_forget"
    assert m[f"{memorised}_loss"] + 3 < m[f"{unseen}_loss"]  # about 1.9 against log(vocab) + 0.5


def test_evaluator_on_the_tiny_model(tiny, splits):
    model, tok = tiny
    ev = E.RWKUEvaluator(batch_size=4, max_new_tokens=6, max_probes=3)
    rec = ev.evaluate(EvalContext(model, tok, PromptFormat(), splits))
    m = rec["metrics"]
    assert set(m) == set(ev.directions)
    assert all(0.0 <= m[k] <= 1.0 for k in m if not k.endswith("_loss"))
    assert m["mia_forget_loss"] > 0 and len(rec["arrays"]["forget_level3_generated"]) == 3
    with pytest.raises(ValueError, match="no split"):
        ev.evaluate(EvalContext(model, tok, PromptFormat(), {"forget_level1": []}))


@pytest.mark.slow
def test_cli_unlearns_rwku_on_the_fixture(tmp_path, cache_dir):
    out = tmp_path / "run"
    args = [
        "benchmark=rwku",
        f"benchmark.data.path={FIX}",
        "benchmark.data.targets=1-2",
        "benchmark.eval.max_new_tokens=6",
        "train.steps=2",
        "train.batch_size=2",
        "logger=none",
        f"hydra.run.dir={out}",
    ]
    r = run_cli(args, tmp_path, cache_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    for key in ("forget_level1", "forget_level3", "neighbor_all", "mia_min_k_pp_auc", "utility_general_acc"):
        assert f"eval/rwku/{key}" in res and f"target/rwku/{key}" in res


def test_config_builds_without_reading_data(tmp_path):
    from conftest import job_config

    from unlearn.job import build_job
    from unlearn.rundir import RunDir

    s = build_job(
        job_config(["benchmark=rwku", "benchmark.data.targets=[1,3]", f"paths.cache_dir={tmp_path}"]),
        RunDir(tmp_path / "run"),
    )
    assert R.parse_targets(s.data.targets, "t") == [1, 3] and s.data.hub_id == "jinzhuoran/RWKU"
    assert isinstance(s.evaluator, E.RWKUEvaluator) and s.evaluator.max_new_tokens == 30
