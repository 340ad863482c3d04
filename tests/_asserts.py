"""Shared assertions for combiner property tests (in the style of TorchJD's ``_asserts.py``)."""

from __future__ import annotations

import torch

from unlearn.combiners import Combiner


def assert_shapes_and_finite(c: Combiner, g_r: list[torch.Tensor], g_f: list[torch.Tensor]) -> list[torch.Tensor]:
    out = c(g_r, g_f)
    assert len(out) == len(g_r)
    for u, r in zip(out, g_r, strict=True):
        assert u.shape == r.shape
        assert u.dtype == r.dtype
        assert torch.isfinite(u).all()
    return out


def _fp32_slack(r: torch.Tensor, f: torch.Tensor) -> float:
    """Rounding room for an inner product that is exactly >= 0 in real arithmetic but computed in
    fp32 with weights up to 3: a few ulps of the products involved."""
    nr, nf = float(r.double().norm()), float(f.double().norm())
    return 1e-5 * nr * (nr + nf) * 4 + 1e-12


def assert_nonneg_inner_product_per_tensor(c: Combiner, g_r: list[torch.Tensor], g_f: list[torch.Tensor]) -> None:
    for u, r, f in zip(c(g_r, g_f), g_r, g_f, strict=True):
        d = torch.dot(u.flatten().double(), r.flatten().double())
        tol = _fp32_slack(r, f)
        assert d >= -tol, f"<update, g_r> = {float(d)} < 0 on a tensor"


def assert_nonneg_inner_product_global(
    c: Combiner, g_r: list[torch.Tensor], g_f: list[torch.Tensor], other: list[torch.Tensor] | None = None
) -> None:
    ref = g_r if other is None else other
    out = c(g_r, g_f)
    d = sum(torch.dot(u.flatten().double(), r.flatten().double()) for u, r in zip(out, ref, strict=True))
    flat = lambda ts: torch.cat([t.flatten() for t in ts])  # noqa: E731
    assert d >= -_fp32_slack(flat(g_r), flat(g_f)) * 2, f"global inner product {float(d)} < 0"


def assert_coordinatewise_agreement(c: Combiner, g_r: list[torch.Tensor], g_f: list[torch.Tensor]) -> None:
    for u, r in zip(c(g_r, g_f), g_r, strict=True):
        assert ((u * r) >= 0).all(), "an update coordinate opposes g_r"


def assert_positive_homogeneous(
    c: Combiner, g_r: list[torch.Tensor], g_f: list[torch.Tensor], scale: float = 4.0
) -> None:
    """combine(s·g_r, s·g_f) = s·combine(g_r, g_f) for s > 0 (a power of two keeps it exact in
    floating point, so conflict tests on near-zero products cannot flip)."""
    a = c([scale * r for r in g_r], [scale * f for f in g_f])
    b = c(g_r, g_f)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, scale * y, rtol=1e-5, atol=1e-6)


def assert_zero_inputs(c: Combiner, shapes: list[tuple[int, ...]]) -> None:
    z = [torch.zeros(s) for s in shapes]
    for u in c(z, [t.clone() for t in z]):
        assert torch.equal(u, torch.zeros_like(u))


def assert_retain_untouched(c: Combiner, g_r: list[torch.Tensor], g_f: list[torch.Tensor]) -> None:
    before = [r.clone() for r in g_r]
    before_f = [f.clone() for f in g_f]
    c(g_r, g_f)
    for r, b in zip(g_r, before, strict=True):
        assert torch.equal(r, b), "the combiner modified g_r in place"
    for f, b in zip(g_f, before_f, strict=True):
        assert torch.equal(f, b), "the combiner modified g_f in place"
