"""The built-in letter scorer and lm-evaluation-harness agree on the same questions: same prompts,
same log-likelihoods, same accuracy (WMDP zero-shot and MMLU few-shot fixtures, tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO

from unlearn.benchmarks.wmdp import WMDPData
from unlearn.eval.choice import evaluate_task
from unlearn.eval.wmdp import WMDPEvaluator
from unlearn.evaluator import EvalContext

lm_eval = pytest.importorskip(
    "lm_eval", reason="lm-evaluation-harness is not installed (pip install 'unlearn[lmeval]'; the dev extra has it)"
)

F = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def splits():
    return WMDPData(
        "cyber",
        forget_path=str(F / "wmdp/cyber_forget.jsonl"),
        retain_path=str(F / "wmdp/cyber_retain.jsonl"),
        questions_path=str(F / "wmdp/wmdp_cyber.jsonl"),
        mmlu_path=str(F / "mmlu/test.jsonl"),
        mmlu_dev_path=str(F / "mmlu/dev.jsonl"),
    ).build()


@pytest.mark.slow
def test_builtin_and_lm_eval_give_the_same_answers(tiny, splits):
    from unlearn.eval.lmeval import evaluate_tasks

    model, tok = tiny
    tasks = WMDPEvaluator(name="wmdp_cyber", subject="cybersecurity", n_shot=3).tasks(splits)
    ours = {t.name: evaluate_task(model, tok, t, batch_size=4) for t in tasks}
    theirs = evaluate_tasks(model, tok, tasks, batch_size=4)
    for t in tasks:
        assert theirs[t.name]["contexts"] == t.contexts()  # token-for-token the same prompts
        assert np.allclose(ours[t.name]["logprobs"], theirs[t.name]["logprobs"], atol=1e-4)
        assert ours[t.name]["pred"] == theirs[t.name]["pred"]
        assert ours[t.name]["acc"] == theirs[t.name]["acc"]


@pytest.mark.slow
def test_the_evaluator_runs_on_either_backend(tiny, splits):
    model, tok = tiny
    kw = dict(name="wmdp_cyber", subject="cybersecurity", n_shot=2, batch_size=4)
    a = WMDPEvaluator(**kw).evaluate(EvalContext(model, tok, None, splits))
    b = WMDPEvaluator(**kw, backend="lmeval").evaluate(EvalContext(model, tok, None, splits))
    assert a["metrics"] == b["metrics"]


CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|user|> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


@pytest.mark.slow
@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_rwku_utility_gives_the_same_answers_on_either_backend(tiny, chat):
    """RWKU's utility questions carry their own few-shot examples (and chat models see a chat
    template), which lm-eval's few-shot sampler cannot express: lm-eval scores our prompts instead."""
    import copy

    from unlearn.benchmarks.rwku import RWKUData
    from unlearn.data.format import PromptFormat
    from unlearn.eval.rwku import RWKUEvaluator

    model, tok = tiny
    tok = copy.deepcopy(tok)
    tok.chat_template = CHAT_TEMPLATE
    fmt = PromptFormat(chat=chat)
    rows = RWKUData(targets="1-2", path=str(F / "rwku")).build()["utility_general"]
    assert rows and any(r["examples"] for r in rows)
    ours = RWKUEvaluator(batch_size=4, n_shot=2).utility_accuracy(model, tok, fmt, rows)
    theirs = RWKUEvaluator(batch_size=4, n_shot=2, backend="lmeval").utility_accuracy(model, tok, fmt, rows)
    assert theirs["contexts"][0].startswith(tok.bos_token) == chat  # the template's own BOS, not a second one
    assert np.allclose(ours["logprobs"], theirs["logprobs"], atol=1e-4)
    assert ours["pred"] == theirs["pred"] and ours["acc"] == theirs["acc"]
    with pytest.raises(ValueError, match="benchmark.eval.backend"):
        RWKUEvaluator(backend="vllm")
