"""Letter-answer multiple choice: prompt building, lm-eval's token split, and the batched scorer
against a hand-built model whose answers are known and against plain sequence scoring."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from unlearn.data.format import PromptFormat
from unlearn.eval.choice import (
    LETTERS,
    MCTask,
    _last_token_logprobs,
    chat_context,
    encode_pair,
    evaluate_task,
    first_n_by_subject,
    letter_logprobs,
    mc_prompt,
    question_block,
)
from unlearn.eval.scoring import score_rows

Q1 = {"question": " What is 2 + 3? ", "choices": ["4", "5", "6", "7"], "answer": 1, "subject": "elementary_mathematics"}
Q2 = {"question": "What is 10 - 4?", "choices": ["6", "5", "7", "4"], "answer": 0, "subject": "elementary_mathematics"}


def test_prompt_is_lm_evals_mmlu_format():
    assert question_block(Q1) == "What is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer:"
    assert question_block(Q1, with_answer=True).endswith("Answer: B")
    prompt = mc_prompt(Q2, [Q1], "About {subject}.\n\n".format(subject="maths"))
    assert prompt == (
        "About maths.\n\nWhat is 2 + 3?\nA. 4\nB. 5\nC. 6\nD. 7\nAnswer: B\n\n"
        "What is 10 - 4?\nA. 6\nB. 5\nC. 7\nD. 4\nAnswer:"
    )


def test_few_shot_examples_come_from_the_same_subject_or_the_row_itself():
    other = {**Q2, "subject": "geography", "question": "Where?"}
    shots = first_n_by_subject([Q1, other, Q2], 5)
    assert shots({"subject": "elementary_mathematics"}) == [Q1, Q2]
    assert shots({"subject": "geography"}) == [other]
    assert shots({"subject": "geography", "examples": [Q1, Q2]}) == [Q1, Q2]
    assert first_n_by_subject([Q1], 0)({"subject": "elementary_mathematics"}) == []
    task = MCTask("t", [Q2], n_shot=1, dev=[Q1])
    assert task.contexts()[0].startswith(
        "The following are multiple choice questions (with answers) about elementary mathematics.\n\nWhat is 2 + 3?"
    )
    assert "about biology" in MCTask("t", [Q2], default_subject="biology", row_subject=False).contexts()[0]


def test_encode_pair_moves_trailing_space_to_the_continuation(tiny):
    _, tok = tiny
    ctx, cont = encode_pair(tok, "Answer: ", "A")
    ctx2, cont2 = encode_pair(tok, "Answer:", " A")
    assert (ctx, cont) == (ctx2, cont2) and len(cont) == 1


class LastTokenLM(nn.Module):
    """Logits that are 0 everywhere except at each row's last real position, where token
    ``favourite[length]`` gets a large score: the scorer must read exactly that position."""

    def __init__(self, vocab: int, favourite: dict[int, int]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.vocab, self.favourite = vocab, favourite
        self.config = SimpleNamespace(max_position_embeddings=512)

    def forward(self, input_ids, attention_mask):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.w
        lengths = attention_mask.sum(-1)
        for b, n in enumerate(lengths.tolist()):
            logits[b, n - 1, self.favourite[n]] = 20.0
        return SimpleNamespace(logits=logits)


def test_scorer_reads_the_last_real_position_of_right_padded_batches(tiny):
    _, tok = tiny
    contexts = ["Q?\nAnswer:", "A longer question here?\nAnswer:", "Mid sized one?\nAnswer:"]
    letter_id = {lab: encode_pair(tok, contexts[0], " " + lab)[1][0] for lab in LETTERS}
    # each context length gets a different favourite letter, so a wrong position gives a wrong answer
    lengths = [len(encode_pair(tok, c, " A")[0]) for c in contexts]
    assert len(set(lengths)) == 3
    want = ["C", "A", "D"]
    model = LastTokenLM(len(tok), {n: letter_id[w] for n, w in zip(lengths, want, strict=True)})
    lp = letter_logprobs(model, tok, contexts, batch_size=3)
    assert [LETTERS[i] for i in lp.argmax(-1)] == want
    expected = torch.log_softmax(torch.tensor([20.0] + [0.0] * (len(tok) - 1)), -1)
    assert np.allclose(lp.max(-1), float(expected[0]), atol=1e-5)


def test_one_forward_per_question_equals_scoring_each_continuation(tiny):
    model, tok = tiny
    contexts = [mc_prompt(Q2, [Q1]), mc_prompt(Q1), "Short?\nAnswer:"]
    fast = letter_logprobs(model, tok, contexts, batch_size=2)
    encoded = []
    for c in contexts:
        for lab in LETTERS:
            ctx, cont = encode_pair(tok, c, " " + lab)
            encoded.append({"input_ids": ctx + cont, "labels": [-100] * len(ctx) + cont})
    slow = -score_rows(model, encoded, tok.pad_token_id, batch_size=5).nll_sum.reshape(3, 4)
    assert np.allclose(fast, slow, atol=1e-4)


def test_multi_token_labels_fall_back_to_scoring_whole_continuations(tiny):
    model, tok = tiny
    labels = ["Zorblax", "Quimbly", "Frandoo", "Yelp"]  # several tokens each for the tiny tokenizer
    assert any(len(encode_pair(tok, "x:", " " + lab)[1]) > 1 for lab in labels)
    contexts = ["Pick one:", "Another one, please:"]
    got = letter_logprobs(model, tok, contexts, labels=labels, batch_size=3)
    for i, c in enumerate(contexts):
        for k, lab in enumerate(labels):
            ctx, cont = encode_pair(tok, c, " " + lab)
            s = score_rows(model, [{"input_ids": ctx + cont, "labels": [-100] * len(ctx) + cont}], tok.pad_token_id)
            assert got[i, k] == pytest.approx(-s.nll_sum[0], abs=1e-4)


def test_contexts_longer_than_the_limit_keep_their_last_tokens(tiny):
    model, tok = tiny
    long = " ".join(f"w{i}" for i in range(400)) + "\nAnswer:"
    ctx, _ = encode_pair(tok, long, " A")
    assert len(ctx) > 128
    ids = [encode_pair(tok, long, " " + lab)[1][0] for lab in LETTERS]
    direct = _last_token_logprobs(model, [ctx[-64:]], tok.pad_token_id, 1, None)[0]
    lp = letter_logprobs(model, tok, [long], max_length=64)
    assert np.allclose(lp[0], direct[ids].numpy(), atol=1e-5)
    assert not np.allclose(lp, letter_logprobs(model, tok, [long], max_length=128), atol=1e-6)


def test_evaluate_task_accuracy_and_chat_wrapping(tiny):
    model, tok = tiny
    task = MCTask("t", [Q1, Q2], n_shot=0)
    res = evaluate_task(model, tok, task, batch_size=2)
    assert 0.0 <= res["acc"] <= 1.0 and len(res["pred"]) == 2
    assert res["acc"] == pytest.approx(np.mean(np.array(res["pred"]) == task.answers()))
    tok2 = copy.deepcopy(tok)  # the session fixture's tokenizer stays as it is
    tok2.chat_template = "{% for m in messages %}<user>{{ m['content'] }}</user>{% endfor %}<bot>"
    fmt = PromptFormat(chat=True)
    res2 = evaluate_task(model, tok2, task, batch_size=2, chat=fmt)
    assert len(res2["pred"]) == 2
    assert chat_context(fmt, tok2, "Q\nA. x") == "<user>Q\nA. x</user><bot>Answer:"
