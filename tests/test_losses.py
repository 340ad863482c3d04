"""Loss components against the papers' formulas: hand-computed values on given log-probs, and
the behaviour each one promises on the tiny model (cached references, hooks, frozen parameters)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import batch_of

from unlearn.config import ConfigError
from unlearn.data.format import PromptFormat, encode_rows
from unlearn.losses import GA, IDK, KL, NLL, NPO, RMU, RMURetain, SimNPO
from unlearn.losses.common import mean_nll, sequence_nll
from unlearn.losses.context import PrepareContext
from unlearn.losses.kl import token_kl
from unlearn.losses.npo import npo_loss
from unlearn.losses.rmu import decoder_layers, hidden_at, masked_mse
from unlearn.losses.simnpo import simnpo_loss
from unlearn.models.reference import Reference


def context(model, tok, rows_by_role, batch_size=4):
    fmt = PromptFormat()
    enc = {role: encode_rows(tok, fmt, rows, 64) for role, rows in rows_by_role.items()}
    return PrepareContext(
        model=model,
        reference=Reference(model),
        tokenizer=tok,
        encoded=enc,
        batch_size=batch_size,
        rows=rows_by_role,
        fmt=fmt,
        max_length=64,
    )


# -- NPO and SimNPO on given log-probs -----------------------------------------------------------
def test_npo_matches_hand_computed_values():
    # -(2/β) log σ(-β (logp - ref)) = (2/β) log(1 + e^{β (logp - ref)}); β = 0.1:
    # logp - ref = 1  → 20 log(1 + e^0.1)  = 14.887933201
    # logp - ref = -2 → 20 log(1 + e^-0.2) = 11.962777388
    got = npo_loss(torch.tensor([-2.0, -5.0]), torch.tensor([-3.0, -3.0]), beta=0.1)
    torch.testing.assert_close(got, torch.tensor([14.887933201, 11.962777388]))


def test_simnpo_matches_hand_computed_values():
    # -(2/β) log σ(β (ℓ - δ)), β = 2.5, δ = 0.5: ℓ = 1 → 0.8 log(1 + e^-1.25) = 0.201543265;
    # ℓ = 3 → 0.8 log(1 + e^-6.25) = 0.001542875
    got = simnpo_loss(torch.tensor([1.0, 3.0]), beta=2.5, delta=0.5)
    torch.testing.assert_close(got, torch.tensor([0.201543265, 0.001542875]))


def test_simnpo_component_uses_the_mean_token_nll(tiny, toy_splits):
    model, tok = tiny
    batch = batch_of(tok, toy_splits["forget"][:3])
    with torch.no_grad():
        ell = mean_nll(model, batch)
        got = SimNPO(beta=2.0, delta=0.3)(model, batch)
    torch.testing.assert_close(got, -(2 / 2.0) * torch.nn.functional.logsigmoid(2.0 * (ell - 0.3)))


def test_npo_caches_reference_logps_of_forget_and_normal_rows(tiny, toy_splits):
    model, tok = tiny
    forget, normal = toy_splits["forget"][:5], toy_splits["retain"][:3]
    npo = NPO(beta=0.5)
    npo.prepare(context(model, tok, {"forget": forget, "normal": normal, "retain": toy_splits["retain"][3:6]}))
    for rows in (forget, normal):
        batch = batch_of(tok, rows)
        with torch.no_grad():
            total, _ = sequence_nll(model, batch)
            # before training the model is the reference: every sample sits at (2/β) log 2
            torch.testing.assert_close(npo(model, batch), torch.full((len(rows),), 2 / 0.5 * math.log(2)))
        torch.testing.assert_close(npo.reference_logps(batch, batch["labels"][:, 1:].ne(-100).sum(-1)), -total)
    with pytest.raises(KeyError, match="no reference log-prob for row"):
        npo(model, batch_of(tok, toy_splits["retain"][3:4]))  # a retain row was never cached


def test_npo_gradient_at_the_start_equals_ga_on_the_summed_nll(tiny, toy_splits):
    model, tok = tiny
    m = copy.deepcopy(model)
    batch = batch_of(tok, toy_splits["forget"][:4])
    npo = NPO(beta=0.3)
    npo.prepare(context(m, tok, {"forget": toy_splits["forget"][:4]}))
    params = [p for p in m.parameters()]
    g_npo = torch.autograd.grad(npo(m, batch).sum(), params)
    g_ga = torch.autograd.grad(-sequence_nll(m, batch)[0].sum(), params)
    for a, b in zip(g_npo, g_ga, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: NPO(beta=0), "forget.beta must be a number > 0, got 0"),
        (lambda: SimNPO(beta=-1.0), "forget.beta must be a number > 0"),
        (lambda: SimNPO(delta="x"), "forget.delta must be a number"),
        (lambda: RMU(coefficient=0), "forget.coefficient must be a number > 0"),
        (lambda: RMU(update_params=[]), "forget.update_params must be a non-empty list"),
        (lambda: RMU(layer=1.5), "forget.layer must be an integer"),
        (lambda: RMURetain(layer=None), "retain.layer must be set"),
        (lambda: IDK(answers=[]), "forget.answers must be a non-empty list"),
    ],
)
def test_hyperparameters_are_validated_naming_the_key(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# -- KL ------------------------------------------------------------------------------------------
def test_token_kl_matches_a_hand_computed_value():
    # position 0: π_ref = (1/2, 1/2), π_θ = (3/4, 1/4): KL = ½ log(2/3) + ½ log 2 = 0.143841036;
    # position 1 is not a label (labels are shifted by one) and must not count
    ref = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])
    cur = torch.tensor([[[math.log(3.0), 0.0], [0.0, 5.0]]])
    got = token_kl(ref, cur, torch.tensor([[-100, 1]]))
    torch.testing.assert_close(got, torch.tensor([0.143841036]))


def test_kl_is_zero_at_the_start_and_grows_as_the_model_moves(tiny, toy_splits):
    model, tok = tiny
    m = copy.deepcopy(model)
    kl = KL()
    kl.prepare(context(m, tok, {"retain": toy_splits["retain"][:4]}))
    batch = batch_of(tok, toy_splits["retain"][:4])
    assert float(kl(m, batch).detach().abs().max()) < 1e-6
    with torch.no_grad():
        m.lm_head.weight.add_(0.05 * torch.randn_like(m.lm_head.weight))
    moved = kl(m, batch)
    assert bool((moved > 1e-4).all())
    moved.mean().backward()
    assert m.lm_head.weight.grad is not None and float(m.lm_head.weight.grad.abs().sum()) > 0


def test_the_reference_runs_without_dropout_and_leaves_every_module_in_its_mode(tiny, toy_splits):
    """KL's and RMU's reference is the frozen starting model: a function of the weights alone,
    even while the live model trains with dropout (OPT-2.7B has dropout 0.1)."""
    model, tok = tiny
    m = copy.deepcopy(model)
    for layer in m.model.layers:
        layer.self_attn.attention_dropout = 0.5
    ref = Reference(m)
    ref.snapshot()
    batch = batch_of(tok, toy_splits["retain"][:4])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    m.train()
    m.lm_head.eval()  # a module the caller had put in another mode keeps it
    with torch.no_grad():
        assert not torch.equal(m(**inputs).logits, m(**inputs).logits)  # dropout is on in the live model
    first, second = ref(**inputs).logits, ref(**inputs).logits
    assert torch.equal(first, second)
    with torch.no_grad():
        m.eval()
        assert torch.equal(first, m(**inputs).logits)
        m.train()
        m.lm_head.eval()
    ref(**inputs)
    assert m.training and m.model.layers[0].training and not m.lm_head.training


# -- RMU -----------------------------------------------------------------------------------------
def test_masked_mse_averages_hidden_units_over_labelled_tokens():
    h = torch.tensor([[[1.0, 3.0], [2.0, 2.0], [9.0, 9.0]]])  # [B=1, T=3, H=2]
    target = torch.zeros_like(h)
    labels = torch.tensor([[-100, 7, 7]])  # tokens 1 and 2 count: ((4+4)/2 + (81+81)/2) / 2 = 42.5
    torch.testing.assert_close(masked_mse(h, target, labels), torch.tensor([42.5]))


def test_hook_reads_layer_k_and_stops_the_forward_there(tiny, toy_splits):
    model, tok = tiny
    # a copy: output_hidden_states=True leaves transformers' capturing hooks (closures, which do
    # not pickle) on the model, and the shared fixture must stay picklable for spawned DDP workers
    model = copy.deepcopy(model)
    layers = decoder_layers(model)
    batch = batch_of(tok, toy_splits["forget"][:2])
    ran = []
    handle = layers[1].register_forward_hook(lambda *a: ran.append(1))
    try:
        h = hidden_at(layers[0], model, batch)
    finally:
        handle.remove()
    assert ran == [] and h.shape == (2, batch["input_ids"].shape[1], model.config.hidden_size)
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    torch.testing.assert_close(h.detach(), full.hidden_states[1])  # hidden_states[0] = embeddings


def test_rmu_trains_only_its_parameters_and_steers_toward_the_control_vector(tiny, toy_splits):
    model, tok = tiny
    m = copy.deepcopy(model)
    rmu = RMU(layer=1, coefficient=3.0, update_layers=[0, 1], update_params=["mlp.down_proj"], seed=1)
    keep = RMURetain(layer=1)
    ctx = context(m, tok, {"forget": toy_splits["forget"], "retain": toy_splits["retain"][:8]})
    rmu.prepare(ctx)
    keep.prepare(ctx)
    trained = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    assert trained == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert keep._reference.memory_bytes == sum(p.numel() * 4 for n, p in m.named_parameters() if p.requires_grad)
    torch.testing.assert_close(rmu.control.norm(), torch.tensor(3.0))
    forget, retain = batch_of(tok, toy_splits["forget"][:6]), batch_of(tok, toy_splits["retain"][:8])
    assert float(keep(m, retain).abs().max()) == 0.0  # nothing has moved yet
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=5e-2)
    start = float(rmu(m, forget).mean())
    for _ in range(10):
        opt.zero_grad()
        (rmu(m, forget).mean() + keep(m, retain).mean()).backward()
        opt.step()
    assert float(rmu(m, forget).mean()) < 0.8 * start
    assert float(keep(m, retain).mean()) > 0  # the retain term now measures a real drift
    changed = sorted(n for n in before if not torch.equal(before[n], dict(m.named_parameters())[n]))
    assert changed == trained


def test_rmu_refuses_layers_the_model_does_not_have(tiny, toy_splits):
    model, tok = tiny
    m = copy.deepcopy(model)
    ctx = context(m, tok, {"forget": toy_splits["forget"][:2]})
    with pytest.raises(ConfigError, match=r"forget.layer must be a decoder layer index in \[0, 1\].*got 7"):
        RMU(layer=7, update_layers=[0]).prepare(ctx)
    with pytest.raises(ConfigError, match=r"forget.update_layers must be .*got -1"):
        RMU(layer=1, update_layers=[-1]).prepare(ctx)
    with pytest.raises(ValueError, match=r"forget.update_layers \[5\] lie above forget.layer=1"):
        RMU(layer=1, update_layers=[5])  # the forward pass stops at forget.layer: 5 would never change
    with pytest.raises(ConfigError, match="forget.update_params .* select no trainable parameter"):
        RMU(layer=1, update_layers=[1], update_params=["mlp.nope"]).prepare(ctx)
    with pytest.raises(ConfigError, match="retain.layer must be a decoder layer index"):
        RMURetain(layer=2).prepare(ctx)


# -- IDK -----------------------------------------------------------------------------------------
def test_idk_is_the_nll_of_a_refusal_to_the_forget_question(tiny, toy_splits):
    model, tok = tiny
    rows = toy_splits["forget"][:3]
    idk = IDK(answers=["I don't know.", "No idea."])
    idk.prepare(context(model, tok, {"forget": rows}))
    relabelled = [{**r, "answer": idk.answer_for(r["id"])} for r in rows]
    assert {r["answer"] for r in relabelled} <= {"I don't know.", "No idea."}
    with torch.no_grad():
        got = idk(model, batch_of(tok, rows))
        want = NLL()(model, batch_of(tok, relabelled))
    torch.testing.assert_close(got, want)
    with pytest.raises(KeyError, match="IDK has no target"):
        idk(model, batch_of(tok, toy_splits["retain"][:1]))


def test_idk_refuses_rows_without_a_question(tiny, toy_splits):
    model, tok = tiny
    with pytest.raises(ConfigError, match=r"forget=idk needs question/answer rows.*'p0-bio'"):
        IDK().prepare(context(model, tok, {"forget": toy_splits["forget_bio"][:1]}))


def test_ga_is_minus_the_mean_nll(tiny, toy_splits):
    model, tok = tiny
    batch = batch_of(tok, toy_splits["forget"][:3])
    with torch.no_grad():
        torch.testing.assert_close(GA()(model, batch), -NLL()(model, batch))


# -- the hook interface: one base with no-op hooks, plain callables adapted at the boundary ------
def test_every_component_and_smoother_has_the_hooks():
    from unlearn.hooks import Component
    from unlearn.smoothing import SGA, NoSmoothing

    for c in (GA(), NLL(), NPO(), SimNPO(), KL(), IDK(), RMU(), RMURetain(layer=1), SGA(), NoSmoothing()):
        assert isinstance(c, Component), type(c).__name__
    assert (GA().log_values(), GA().state_dict(), GA().prepare(None)) == ({}, {}, None)


def test_a_plain_callable_gets_the_hooks_it_defines_and_no_ops_for_the_rest():
    from unlearn.losses import Objective

    calls = []

    class Foreign:  # written without the base, like the extension example in docs/extending.md
        runs_reference = True

        def __call__(self, model, batch):
            return torch.ones(2)

        def log_values(self):
            return {"train/foreign/x": 1.0}

        def prepare(self, ctx):
            calls.append(("prepare", ctx))

    obj = Objective(forget=Foreign(), retain=lambda model, batch: torch.zeros(2))
    obj.prepare("ctx")
    obj.before_step(0, None, {})
    assert calls == [("prepare", "ctx")]
    assert [c.log_values() for c in obj.components()] == [{"train/foreign/x": 1.0}, {}, {}]
    assert [c.state_dict() for c in obj.components()] == [{}, {}, {}]
    assert obj.forget.runs_reference and not obj.retain.runs_reference  # fsdp.check_sharded reads it
    assert obj.loss("forget", None, {"forget": {}}).item() == 1.0
    with pytest.raises(TypeError, match="callable"):
        Objective(forget=3, retain=None)


def test_the_objective_hands_before_step_to_every_component_with_the_forget_loss():
    from unlearn.hooks import Component
    from unlearn.losses import Objective

    seen = []

    class Spy(Component):
        def __call__(self, model, batch):
            return torch.zeros(1)

        def before_step(self, step, forget, model, batch):
            seen.append((self, step, forget))

    f, r = Spy(), Spy()
    Objective(forget=f, retain=r).before_step(7, None, {})
    assert seen == [(f, 7, f), (r, 7, f)]
