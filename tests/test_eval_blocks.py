"""The shared evaluation pieces the public benchmarks add: BLEU, ROUGE-L variants, perplexity,
repetition and collapse, prompt truncation, reference cutting, the local file formats."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from _stubs import MemorizerLM

from unlearn.benchmarks.hub import DataUnavailable, load_rows
from unlearn.eval import metrics as M
from unlearn.eval.generate import first_tokens, greedy, prompt_budget


def test_bleu_is_100_for_identical_text_and_low_for_unrelated():
    refs = ["the lantern flared green then gold", "a heron stood on the lock gate"]
    assert M.bleu(refs, refs) == pytest.approx(100.0)
    assert M.bleu(["completely different words here", "nothing shared at all"], refs) < 10
    assert M.sentence_bleu(refs, refs) == pytest.approx([100.0, 100.0])


def test_rouge_l_measures_and_stemming():
    # reference 4 words, prediction 2 of them: recall 0.5, precision 1, F 2/3
    assert M.rouge_l(["stone bridge"], ["the old stone bridge"], "recall")[0] == pytest.approx(0.5)
    assert M.rouge_l(["stone bridge"], ["the old stone bridge"], "precision")[0] == pytest.approx(1.0)
    assert M.rouge_l(["stone bridge"], ["the old stone bridge"])[0] == pytest.approx(2 / 3)
    assert M.rouge_l(["bridges"], ["bridge"])[0] == 0.0  # MUSE: no stemmer
    assert M.rouge_l_recall(["bridges"], ["bridge"])[0] == 1.0  # TOFU: stemmer
    with pytest.raises(ValueError, match="measure"):
        M.rouge_l(["a"], ["a"], "f1")


def test_perplexity_is_token_weighted_and_inf_instead_of_overflow():
    assert M.perplexity(np.array([2.0, 4.0]), np.array([1, 3])) == pytest.approx(math.exp(6 / 4))
    assert M.perplexity(np.array([1e6]), np.array([10])) == math.inf
    assert M.perplexity(np.array([np.nan]), np.array([3])) == math.inf


def test_repetition_and_collapse_reasons():
    assert M.repeated_ngram_fraction("one two three four five") == 0.0
    assert M.repeated_ngram_fraction(" ".join(["the"] * 12)) == pytest.approx(1 - 1 / 10)
    assert M.repeated_ngram_fraction("too short") == 0.0
    assert M.collapse_reasons({"a": 1.0}, 10.0, 100.0, 0.1, 0.5) == {}
    r = M.collapse_reasons({"a": math.nan}, math.inf, 100.0, 0.9, 0.5)
    assert set(r) == {"nonfinite", "ppl", "repetition"} and "a" in r["nonfinite"]
    assert set(M.collapse_reasons({}, 6e72, 100.0, 0.0, 0.5)) == {"ppl"}


def test_greedy_keeps_the_last_prompt_tokens_and_bos(tiny):
    _, tok = tiny
    prompt, cont = "alpha beta gamma delta epsilon zeta", "omega"
    stub = MemorizerLM(tok, {prompt: cont})
    n_prompt = len(tok(prompt)["input_ids"])
    assert greedy(stub, tok, [prompt], 4, max_prompt_tokens=n_prompt) == [cont]
    assert greedy(stub, tok, [prompt], 4, max_prompt_tokens=3) == [cont]  # BOS + the last 2 tokens still match
    ids = tok(prompt)["input_ids"]
    assert stub.prompts_seen[-1] == [tok.bos_token_id, *ids[-2:]]
    assert greedy(MemorizerLM(tok, {"other words": cont}), tok, [prompt], 4, max_prompt_tokens=3) == [""]


def test_first_tokens_and_prompt_budget(tiny):
    model, tok = tiny
    text = "the lantern flared green then gold"
    assert first_tokens(tok, text, 1000) == text
    cut = first_tokens(tok, text, 3)
    assert text.startswith(cut.strip()) and len(tok(cut, add_special_tokens=False)["input_ids"]) <= 3
    ctx = model.config.max_position_embeddings
    assert prompt_budget(model, 100) == ctx - 100
    assert prompt_budget(model, 100, limit=7) == 7
    with pytest.raises(ValueError, match="no room"):
        prompt_budget(model, ctx)


def test_local_files_json_lines_named_json_lists_of_strings_and_txt(tmp_path):
    (tmp_path / "lines.json").write_text('{"question": "q1", "answer": "a"}\n{"question": "q2", "answer": "b"}\n')
    assert [
        r["question"] for r in load_rows("tofu forget", None, path=str(tmp_path / "lines.json"), required=["question"])
    ] == ["q1", "q2"]
    (tmp_path / "texts.json").write_text(json.dumps(["first text", "second text"]))
    assert load_rows("muse privleak", None, path=str(tmp_path / "texts.json"), required=["text"]) == [
        {"text": "first text"},
        {"text": "second text"},
    ]
    (tmp_path / "book.txt").write_text("Chapter One.\nIt was dark.")
    assert load_rows("book", None, path=str(tmp_path / "book.txt"), required=["text"])[0]["text"].startswith(
        "Chapter One."
    )
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataUnavailable, match="neither JSON nor JSON lines"):
        load_rows("book", None, path=str(tmp_path / "bad.json"))


def test_one_padding_rule_for_batches_contexts_and_prompts():
    """data.collate.pad is the only padding code: right for training batches (labels -100) and
    scored contexts, left for generation prompts; the mask marks the given tokens."""
    from unlearn.data.collate import collate, pad

    ids, mask = pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad([[5, 6, 7], [8]], 9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    b = collate(
        [{"input_ids": [1, 2], "labels": [-100, 2], "id": "a"}, {"input_ids": [3], "labels": [3], "id": "b"}], pad_id=4
    )
    assert b["input_ids"].tolist() == [[1, 2], [3, 4]] and b["labels"].tolist() == [[-100, 2], [3, -100]]
    assert b["attention_mask"].tolist() == [[1, 1], [1, 0]] and b["ids"] == ["a", "b"]
    with pytest.raises(ValueError, match="side"):
        pad([[1]], 0, side="middle")
