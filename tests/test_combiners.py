"""Property tests of the gradient combiners (docs/methods.md §2), claiming only the guarantee each one has,
plus pinned values on one small hand-made input."""

from __future__ import annotations

import math

import pytest
import torch
from _asserts import (
    _fp32_slack,
    assert_coordinatewise_agreement,
    assert_nonneg_inner_product_global,
    assert_nonneg_inner_product_per_tensor,
    assert_positive_homogeneous,
    assert_retain_untouched,
    assert_shapes_and_finite,
    assert_zero_inputs,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from unlearn.combiners import SAGO, PCGrad, PCGradGlobal, PCGradSymmetric, Sum, gradient_diagnostics
from unlearn.combiners.base import Combination, Combiner

ALL = [
    Sum(),
    PCGrad(),
    PCGradGlobal(),
    PCGradSymmetric(),
    SAGO(),
    SAGO(prefer_retain=True),
    SAGO(gate="soft"),
    Sum(alpha=0.5, gamma=2.0),
    PCGrad(alpha=0.3, gamma=1.7),
    SAGO(alpha=0.1, gamma=1.0),
]
# docs/methods.md §2's literal soft gate σ(κ·g_f⊙g_r) is not positively homogeneous, so it is not in ALL
SOFT_RAW = [SAGO(gate="soft_raw"), SAGO(gate="soft_raw", kappa=0.3, alpha=0.5, gamma=2.0, prefer_retain=True)]

# gradient-like values: exact zeros (ties in the sign tests) or magnitudes in [1e-3, 10]
_mag = st.floats(0.0009765625, 10, width=32)  # 2**-10
values = st.one_of(st.just(0.0), _mag, _mag.map(lambda x: -x))


@st.composite
def grad_pairs(draw):
    """Two lists of same-shaped float32 tensors (1–4 tensors, up to 3×4 elements each)."""
    shapes = draw(st.lists(st.sampled_from([(1,), (3,), (2, 2), (3, 4)]), min_size=1, max_size=4))

    def tensors():
        return [
            torch.tensor(
                draw(st.lists(values, min_size=math.prod(s), max_size=math.prod(s))), dtype=torch.float32
            ).view(s)
            for s in shapes
        ]

    return tensors(), tensors()


# -- properties every combiner has ----------------------------------------------------------------
@pytest.mark.parametrize("c", ALL + SOFT_RAW, ids=repr)
@given(pair=grad_pairs())
@settings(max_examples=60, deadline=None)
def test_shapes_finite_and_inputs_untouched(c, pair):
    g_r, g_f = pair
    assert_shapes_and_finite(c, g_r, g_f)
    assert_retain_untouched(c, g_r, g_f)


@pytest.mark.parametrize("c", ALL + SOFT_RAW, ids=repr)
def test_zero_gradients_give_zero_update(c):
    assert_zero_inputs(c, [(3,), (2, 2)])


@pytest.mark.parametrize("c", ALL, ids=repr)
@given(pair=grad_pairs())
@settings(max_examples=40, deadline=None)
def test_positive_homogeneity(c, pair):
    g_r, g_f = pair
    assert_positive_homogeneous(c, g_r, g_f)


# -- the guarantee of each combiner ------------------------------------------------------------
@given(pair=grad_pairs(), alpha=st.floats(0, 3), gamma=st.floats(0, 3))
@settings(max_examples=100, deadline=None)
def test_sum_is_the_weighted_sum(pair, alpha, gamma):
    g_r, g_f = pair
    for u, r, f in zip(Sum(alpha=alpha, gamma=gamma)(g_r, g_f), g_r, g_f, strict=True):
        torch.testing.assert_close(u, alpha * r + gamma * f)


@given(pair=grad_pairs(), alpha=st.floats(0, 3), gamma=st.floats(0, 3))
@settings(max_examples=100, deadline=None)
def test_pcgrad_never_opposes_retain_on_any_tensor(pair, alpha, gamma):
    assert_nonneg_inner_product_per_tensor(PCGrad(alpha=alpha, gamma=gamma), *pair)


def _bf16(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.to(torch.bfloat16) for t in ts]


def _fp32(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.float() for t in ts]  # exact: every bf16 value is an fp32 value


@given(pair=grad_pairs(), alpha=st.floats(0, 3), gamma=st.floats(0, 3))
@settings(max_examples=100, deadline=None)
def test_pcgrad_on_bf16_gradients_keeps_its_guarantee_and_fp32_diagnostics(pair, alpha, gamma):
    """bf16 gradients (a bf16 model): norms and dots are taken in fp32, so the update is the fp32
    update of the same values rounded once, and the diagnostics are the fp32 ones."""
    g_r, g_f = _bf16(pair[0]), _bf16(pair[1])
    c = PCGrad(alpha=alpha, gamma=gamma)
    low, ref = c.combine(g_r, g_f), c.combine(_fp32(g_r), _fp32(g_f))
    assert_nonneg_inner_product_per_tensor(c, _fp32(g_r), _fp32(g_f))  # holds in fp32, before the cast
    for u, v, r, f in zip(low.update, ref.update, g_r, g_f, strict=True):
        assert u.dtype == torch.bfloat16
        # one bf16 rounding of the fp32 update: within one bf16 ulp (2^-7 relative) of it
        # (and fp32 values below bf16's smallest normal may flush to 0)
        assert ((u.float() - v).abs() <= 2**-7 * v.abs() + torch.finfo(torch.bfloat16).tiny).all()
        # so <update, g_r> >= 0 up to that rounding: |<u - v, r>| <= 2^-7 Σ|v_i r_i|
        d = torch.dot(u.double().flatten(), r.double().flatten())
        tol = 2**-7 * float((v.double() * r.double()).abs().sum()) + _fp32_slack(r.float(), f.float())
        assert d >= -tol, f"<update, g_r> = {float(d)} < -{tol} on a bf16 tensor"
    assert low.stats.keys() == ref.stats.keys()
    for k in ref.stats:
        assert low.stats[k].dtype == torch.float32
        torch.testing.assert_close(low.stats[k], ref.stats[k], rtol=1e-6, atol=0, msg=k)
    got = gradient_diagnostics(g_r, g_f, low.update)
    want = gradient_diagnostics(_fp32(g_r), _fp32(g_f), _fp32(low.update))
    for k in want:
        assert got[k].dtype == torch.float32, k
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7, msg=k)


@given(pair=grad_pairs())
@settings(max_examples=60, deadline=None)
def test_pcgrad_is_the_sum_where_tensors_do_not_conflict(pair):
    g_r, g_f = pair
    for u, s, r, f in zip(PCGrad()(g_r, g_f), Sum()(g_r, g_f), g_r, g_f, strict=True):
        if torch.dot(r.flatten(), f.flatten()) >= 0:
            torch.testing.assert_close(u, s)


@given(pair=grad_pairs(), alpha=st.floats(0, 3), gamma=st.floats(0, 3))
@settings(max_examples=100, deadline=None)
def test_pcgrad_global_never_opposes_retain_globally(pair, alpha, gamma):
    assert_nonneg_inner_product_global(PCGradGlobal(alpha=alpha, gamma=gamma), *pair)


def test_pcgrad_global_gives_no_per_tensor_guarantee():
    # tensor 0 conflicts strongly, tensor 1 agrees more: globally fine, tensor 0 still opposes g_r.
    g_r, g_f = [torch.tensor([1.0]), torch.tensor([1.0])], [torch.tensor([-3.0]), torch.tensor([5.0])]
    u = PCGradGlobal()(g_r, g_f)
    assert float(u[0] * g_r[0]) < 0
    assert_nonneg_inner_product_global(PCGradGlobal(), g_r, g_f)


@given(pair=grad_pairs(), alpha=st.floats(0, 3), gamma=st.floats(0, 3))
@settings(max_examples=100, deadline=None)
def test_pcgrad_symmetric_opposes_neither_task(pair, alpha, gamma):
    g_r, g_f = pair
    c = PCGradSymmetric(alpha=alpha, gamma=gamma)
    assert_nonneg_inner_product_global(c, g_r, g_f)
    assert_nonneg_inner_product_global(c, g_r, g_f, other=g_f)


@pytest.mark.parametrize("prefer_retain", [False, True])
@given(pair=grad_pairs(), alpha=st.floats(0, 3), gamma=st.floats(0, 3))
@settings(max_examples=100, deadline=None)
def test_sago_agrees_in_sign_with_retain_on_every_coordinate(prefer_retain, pair, alpha, gamma):
    assert_coordinatewise_agreement(SAGO(alpha=alpha, gamma=gamma, prefer_retain=prefer_retain), *pair)


@given(pair=grad_pairs())
@settings(max_examples=60, deadline=None)
def test_sago_takes_retain_on_conflicts_and_forget_elsewhere(pair):
    g_r, g_f = pair
    for u, r, f in zip(SAGO(alpha=0.5, gamma=2.0)(g_r, g_f), g_r, g_f, strict=True):
        conflict = (r * f) < 0
        torch.testing.assert_close(u[conflict], 0.5 * r[conflict])
        torch.testing.assert_close(u[~conflict], 2.0 * f[~conflict])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("prefer_retain", [False, True])
@given(pair=grad_pairs(), alpha=st.floats(0, 3), gamma=st.floats(0, 3))
@settings(max_examples=60, deadline=None)
def test_the_hard_gate_is_the_select_of_the_spec_bit_for_bit(dtype, prefer_retain, pair, alpha, gamma):
    # the gate is a lerp by a 0/1 weight (fast on a CPU); it must be torch.where's select exactly
    g_r, g_f = ([t.to(dtype) for t in ts] for ts in pair)
    c = SAGO(alpha=alpha, gamma=gamma, prefer_retain=prefer_retain)
    for u, r, f in zip(c(g_r, g_f), g_r, g_f, strict=True):
        # the two ends as the combiner forms them (their own arithmetic is tested above)
        assert torch.equal(u, torch.where(f * r < 0, r * alpha if alpha != 1 else r, c._keep(r, f)))


def test_a_non_finite_gradient_gives_a_non_finite_update_for_the_guard():
    # documented in SAGO._tensor: an inf in either gradient is not hidden by the gate
    g_r = [torch.tensor([1.0, -1.0, 2.0])]
    g_f = [torch.tensor([float("inf"), 1.0, 1.0])]
    assert not torch.isfinite(SAGO()(g_r, g_f)[0]).all()
    assert not torch.isfinite(gradient_diagnostics(g_r, g_f, SAGO()(g_r, g_f))["norm_update"])


def test_soft_gate_approaches_the_hard_gate():
    g = torch.Generator().manual_seed(0)
    g_r, g_f = [torch.randn(50, generator=g)], [torch.randn(50, generator=g)]
    hard = SAGO()(g_r, g_f)[0]
    soft = SAGO(gate="soft", kappa=1e4)(g_r, g_f)[0]
    torch.testing.assert_close(soft, hard, atol=1e-3, rtol=1e-3)
    mild = SAGO(gate="soft", kappa=1.0)(g_r, g_f)[0]
    assert not torch.allclose(mild, hard, atol=1e-2)


@pytest.mark.parametrize("gate", ["soft", "soft_raw"])
@given(pair=grad_pairs(), alpha=st.floats(0, 3), gamma=st.floats(0, 3), kappa=st.floats(0.01, 100))
@settings(max_examples=60, deadline=None)
def test_soft_gates_mix_between_retain_and_forget_on_every_coordinate(gate, pair, alpha, gamma, kappa):
    g_r, g_f = pair
    for u, r, f in zip(SAGO(alpha=alpha, gamma=gamma, gate=gate, kappa=kappa)(g_r, g_f), g_r, g_f, strict=True):
        lo, hi = torch.minimum(alpha * r, gamma * f), torch.maximum(alpha * r, gamma * f)
        slack = 1e-6 * (lo.abs() + hi.abs())
        assert ((u >= lo - slack) & (u <= hi + slack)).all()


@given(pair=grad_pairs(), kappa=st.floats(0.01, 100))
@settings(max_examples=60, deadline=None)
def test_soft_raw_is_the_literal_formula_of_spec(pair, kappa):
    g_r, g_f = pair
    for u, r, f in zip(SAGO(alpha=0.5, gamma=2.0, gate="soft_raw", kappa=kappa)(g_r, g_f), g_r, g_f, strict=True):
        w = torch.sigmoid(kappa * f * r)
        torch.testing.assert_close(u, w * 2.0 * f + (1 - w) * 0.5 * r, rtol=1e-5, atol=1e-6)


def test_the_default_soft_gate_normalises_the_product_and_soft_raw_does_not():
    """The documented deviation: ``soft`` gates on g_f⊙g_r / mean|g_f⊙g_r|, so it is blind to the
    gradients' scale; ``soft_raw`` (the literal σ(κ·g_f⊙g_r)) on tiny gradients is a plain average."""
    g = torch.Generator().manual_seed(0)
    g_r, g_f = [torch.randn(50, generator=g)], [torch.randn(50, generator=g)]
    tiny_r, tiny_f = [1e-4 * g_r[0]], [1e-4 * g_f[0]]
    soft = SAGO(gate="soft", kappa=5.0)
    torch.testing.assert_close(soft(tiny_r, tiny_f)[0], 1e-4 * soft(g_r, g_f)[0])
    raw = SAGO(gate="soft_raw", kappa=5.0)(tiny_r, tiny_f)[0]
    torch.testing.assert_close(raw, 0.5 * (tiny_r[0] + tiny_f[0]), rtol=1e-5, atol=1e-10)  # σ(κ·1e-8) ≈ 1/2
    assert not torch.allclose(soft(tiny_r, tiny_f)[0], raw, rtol=1e-2, atol=0)


# -- options -------------------------------------------------------------------------------------
def test_select_applies_the_rule_only_to_matching_parameters():
    g_r = [torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])]
    g_f = [torch.tensor([-1.0, 1.0]), torch.tensor([-1.0, 1.0])]
    res = SAGO(select=r"mlp").combine(g_r, g_f, names=["layers.0.mlp.w", "layers.0.attn.w"])
    torch.testing.assert_close(res.update[0], torch.tensor([1.0, 1.0]))  # gated
    torch.testing.assert_close(res.update[1], torch.tensor([0.0, 2.0]))  # plain sum
    assert float(res.stats["selected_frac"]) == 0.5


def test_reference_replaces_retain_in_the_conflict_test():
    g_r, g_f = [torch.tensor([1.0, 1.0])], [torch.tensor([1.0, -1.0])]
    ref = [torch.tensor([-1.0, -1.0])]  # e.g. an EMA that points the other way
    u = SAGO().combine(g_r, g_f, reference=ref).update[0]
    torch.testing.assert_close(u, torch.tensor([1.0, -1.0]))  # coord 0 conflicts with ref → g_r
    u = PCGrad().combine(g_r, g_f, reference=ref).update[0]
    # <g_f, ref> = 0: no projection against the reference, although g_f conflicts with g_r on coord 1
    torch.testing.assert_close(u, torch.tensor([2.0, 0.0]))


def test_symmetric_pcgrad_refuses_a_reference_instead_of_ignoring_it():
    g_r, g_f, ref = [torch.tensor([1.0, 1.0])], [torch.tensor([1.0, -3.0])], [torch.tensor([-1.0, -1.0])]
    with pytest.raises(ValueError, match=r"PCGradSymmetric takes no reference gradient: set train\.retain_ema=null"):
        PCGradSymmetric().combine(g_r, g_f, reference=ref)
    PCGradSymmetric().combine(g_r, g_f)  # fine without one
    for c in (PCGrad(), PCGradGlobal(), SAGO()):
        assert c.uses_reference
        c.combine(g_r, g_f, reference=ref)


@pytest.mark.parametrize("bad", [dict(alpha=-1.0), dict(gamma=-0.1), dict(select="(")])
def test_bad_arguments_name_the_key(bad):
    with pytest.raises(ValueError, match=f"combiner.{next(iter(bad))}"):
        SAGO(**bad)
    with pytest.raises(ValueError, match="combiner.gate"):
        SAGO(gate="fuzzy")


def test_repr_mirrors_the_constructor():
    assert repr(PCGrad(alpha=0.5)) == "PCGrad(alpha=0.5, gamma=1.0, select=None, eps=0.0)"
    assert eval(repr(SAGO(gamma=2.0, prefer_retain=True)), {"SAGO": SAGO}) == SAGO(gamma=2.0, prefer_retain=True)


# -- pinned values on one hand-made input ---------------------------------------------------------
def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


G_R = [torch.tensor([1.0, 0.0]), torch.tensor([[1.0, 1.0]])]
G_F = [torch.tensor([-1.0, 2.0]), torch.tensor([[-2.0, 1.0]])]

PINNED = {
    "sum": (Sum(), [[0.0, 2.0], [[-1.0, 2.0]]]),
    "sum_weighted": (Sum(alpha=0.5, gamma=2.0), [[-1.5, 4.0], [[-3.5, 2.5]]]),
    # t0: <f,r> = -1, |r|² = 1 → f̃ = (0, 2); t1: <f,r> = -1, |r|² = 2 → f̃ = (-1.5, 1.5)
    "pcgrad": (PCGrad(), [[1.0, 2.0], [[-0.5, 2.5]]]),
    # one projection: <f,r> = -2, |r|² = 3 → f̃ = f + (2/3) r
    "pcgrad_global": (PCGradGlobal(), [[2 / 3, 2.0], [[-1 / 3, 8 / 3]]]),
    # r' = r + 0.2 f, f' = f + (2/3) r
    "pcgrad_symmetric": (PCGradSymmetric(), [[0.8 - 1 / 3, 2.4], [[0.6 - 4 / 3, 1.2 + 5 / 3]]]),
    # products t0 (-1, 0), t1 (-2, 1): conflicts take g_r, a zero product is no conflict
    "sago": (SAGO(), [[1.0, 2.0], [[1.0, 1.0]]]),
    "sago_weighted": (SAGO(alpha=0.5, gamma=2.0), [[0.5, 4.0], [[0.5, 2.0]]]),
    "sago_prefer_retain": (SAGO(prefer_retain=True), [[1.0, 2.0], [[1.0, 2.0]]]),
    # w = σ(g_f·g_r) = σ(-1), σ(0) | σ(-2), σ(1); update = w·g_f + (1-w)·g_r
    "sago_soft_raw": (SAGO(gate="soft_raw", kappa=1.0), [[1 - 2 * _sigmoid(-1), 1.0], [[1 - 3 * _sigmoid(-2), 1.0]]]),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_pinned_values(name):
    c, expected = PINNED[name]
    out = c(G_R, G_F)
    for u, e in zip(out, expected, strict=True):
        torch.testing.assert_close(u, torch.tensor(e), rtol=1e-6, atol=1e-6)


def test_pinned_diagnostics():
    res = PCGrad().combine(G_R, G_F)
    assert float(res.stats["conflict_frac_tensor"]) == 1.0
    # removed: |(-1)·r0| and |(-0.5)·r1| → sqrt(1 + 0.5)
    assert float(res.stats["proj_norm"]) == pytest.approx(math.sqrt(1.5))
    d = gradient_diagnostics(G_R, G_F, res.update)
    assert float(d["norm_retain"]) == pytest.approx(math.sqrt(3))
    assert float(d["norm_forget"]) == pytest.approx(math.sqrt(10))
    assert float(d["cos_forget_retain"]) == pytest.approx(-2 / math.sqrt(30))
    assert float(d["conflict_frac"]) == pytest.approx(2 / 4)  # coords with g_f·g_r < 0
    u = torch.cat([t.flatten() for t in res.update])
    assert float(d["cos_update_retain"]) == pytest.approx(
        float(u @ torch.tensor([1.0, 0, 1, 1]) / u.norm() / math.sqrt(3))
    )


# -- the rule is abstract ------------------------------------------------------------------------
class RuleLess(Combiner):  # a subclass that forgot its rule
    pass


def test_a_combiner_without_a_rule_is_refused_when_built_not_at_the_first_step():
    from hydra.utils import instantiate

    with pytest.raises(TypeError, match="abstract"):
        RuleLess()
    with pytest.raises(Exception, match="abstract"):  # as combiner=... would build it from its _target_
        instantiate({"_target_": f"{__name__}.RuleLess", "alpha": 1.0})
    with pytest.raises(TypeError, match="abstract"):
        Combiner()


def test_either_form_of_the_rule_makes_a_combiner():
    class WholeLists(Combiner):
        def _combine(self, g_r, g_f, ref):
            return Combination([r + f for r, f in zip(g_r, g_f, strict=True)])

    class PerTensor(Combiner):
        def _tensor(self, r, f, s, totals):
            return r - f, {}

    g_r, g_f = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, 5.0])]
    whole, per = WholeLists(), PerTensor()
    assert (whole.per_tensor, whole.streams, per.per_tensor, per.streams) == (False, False, True, True)
    torch.testing.assert_close(whole(g_r, g_f)[0], torch.tensor([4.0, 7.0]))
    torch.testing.assert_close(per(g_r, g_f)[0], torch.tensor([-2.0, -3.0]))


def _in_place(c: Combiner, g_r, g_f, names, reference=None):
    """What the training step does without diagnostics: each tensor's update written into (a
    copy of) its g_r, the step's own buffer, given up to the rule."""
    ref = g_r if reference is None else reference
    run = c.start(names, len(g_r))
    if c.needs_totals:
        run.prepare(g_r, g_f, ref)
    owned = [r.clone() for r in g_r]
    update = []
    for i, (r, f, s) in enumerate(zip(owned, g_f, ref, strict=True)):
        update.append(run.tensor(i, r, f, r if s is g_r[i] else s, out=r))
    return update, run.stats()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("c", ALL + SOFT_RAW + [PCGrad(select="1"), SAGO(select="0", gamma=0.5)], ids=repr)
@given(pair=grad_pairs(), with_reference=st.booleans())
@settings(max_examples=40, deadline=None)
def test_writing_the_update_into_the_retain_buffer_changes_no_bit(c, pair, dtype, with_reference):
    """``out=r`` (no diagnostics on the step) runs the same kernels in place: every update and
    statistic is bit-identical to the pure call, in fp32 and in bf16 (fp32 arithmetic, one rounding)."""
    g_r, g_f = ([t.to(dtype) for t in ts] for ts in pair)
    names = [str(i) for i in range(len(g_r))]
    reference = [t * 0.5 - 0.25 for t in g_f] if with_reference and c.uses_reference else None
    expected = c.combine(g_r, g_f, names=names, reference=reference)
    update, stats = _in_place(c, g_r, g_f, names, reference)
    assert c.writes_out, f"{c!r} allocates its update; the built-in rules all write it into r"
    for u, e in zip(update, expected.update, strict=True):
        assert u.dtype == e.dtype and torch.equal(u, e)
    assert stats.keys() == expected.stats.keys()
    for k in stats:
        assert torch.equal(stats[k], expected.stats[k]), k


def test_axpby_writes_only_into_its_first_operand():
    a, b = torch.ones(3), torch.full((3,), 2.0)
    from unlearn.combiners.base import axpby

    assert axpby(a, 2.0, (b, 1.0), out=a) is a and torch.equal(a, torch.full((3,), 4.0))
    with pytest.raises(ValueError, match="out=a"):
        axpby(a, 2.0, (b, 1.0), out=b)
