"""PCGrad-style projections of the forget gradient away from the retain gradient.

``PCGrad`` is the asymmetric, per-tensor ("module-wise") adaptation used by the SAGO paper
(Retention-first gradient synthesis, docs/methods.md §2); ``PCGradGlobal`` is the same projection with one dot
product over all parameters (what GRU does); ``PCGradSymmetric`` is the original two-task PCGrad of
Yu et al. (2020), which projects each task's gradient onto the other's normal plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unlearn.combiners.base import Combiner, Stats, axpby, dot, sq_norms


def _check_eps(eps: float) -> None:
    if not eps >= 0:
        raise ValueError(f"combiner.eps must be >= 0, got {eps!r}")


def _coef(d: Tensor, n2: Tensor, eps: float) -> Tensor:
    """The projection coefficient ``d / (n2 + eps)`` where ``d < 0`` (a conflict), else 0; also 0
    where ``n2 + eps`` is 0 (a zero gradient has nothing to project onto). With ``eps = 0``
    (default) the projection is exact, which the guarantees need. Five small ops: per-tensor
    PCGrad runs this once per tensor inside the backward, where each tiny op's dispatch costs more
    than its arithmetic."""
    den = n2 + eps if eps else n2
    return torch.where((d < 0) & (den > 0), d / den, 0.0)


def _total(sums: list[Stats], key: str) -> Tensor:
    """One per-tensor sum added over the tensors (in parameter order)."""
    return torch.stack([t[key] for t in sums]).sum() if sums else torch.zeros(())


@dataclass(frozen=True)
class PCGrad(Combiner):
    """Per tensor ``j``: if ``<g_f^j, r^j> < 0`` remove the component of ``g_f^j`` along ``r^j``.

    ``r`` is ``g_r`` (or the ``reference`` passed in). Update ``alpha*g_r^j + gamma*g̃_f^j``.
    Guarantee: ``<update^j, g_r^j> >= 0`` for every tensor when ``alpha, gamma >= 0`` and no
    reference is used. ``g_r`` is never modified.
    """

    writes_out: ClassVar[bool] = True
    eps: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eps(self.eps)

    def _sums(self, r: Tensor, f: Tensor, s: Tensor) -> Stats:
        return {"d": dot(f, s), "n2": dot(s, s)}

    def _tensor(
        self, r: Tensor, f: Tensor, s: Tensor, totals: Stats, out: Tensor | None = None
    ) -> tuple[Tensor, Stats]:
        coef = _coef(totals["d"], totals["n2"], self.eps)
        # g̃_f = g_f - coef*s, so the update is alpha*g_r + gamma*g_f - gamma*coef*s: with s = g_r
        # that is one weight on g_r, and no tensor beyond the update is allocated.
        if s is r:
            return axpby(r, self.alpha - self.gamma * coef, (f, self.gamma), out=out), {}
        return axpby(r, self.alpha, (f, self.gamma), (s, -self.gamma * coef), out=out), {}

    def _finish(self, parts: list[Stats], totals: Stats) -> Stats:
        if not parts:
            return {}
        removed2 = torch.stack([_coef(p["d"], p["n2"], self.eps) ** 2 * p["n2"] for p in parts]).sum()
        conflict = torch.stack([(p["d"] < 0).float() for p in parts]).mean()
        return {"conflict_frac_tensor": conflict, "proj_norm": self.gamma * torch.sqrt(removed2)}


@dataclass(frozen=True)
class PCGradGlobal(Combiner):
    """One projection over all parameters at once. Guarantee: ``<update, g_r> >= 0`` globally.

    Its coefficient needs ``<g_f, r>`` over every tensor before any update (``needs_totals``).
    """

    needs_totals: ClassVar[bool] = True
    writes_out: ClassVar[bool] = True
    eps: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eps(self.eps)

    def _sums(self, r: Tensor, f: Tensor, s: Tensor) -> Stats:
        return {"d_j": dot(f, s), "n2_j": dot(s, s)}

    def _totals(self, sums: list[Stats]) -> Stats:
        d, n2 = _total(sums, "d_j"), _total(sums, "n2_j")
        return {"d": d, "n2": n2, "coef": _coef(d, n2, self.eps)}

    def _tensor(
        self, r: Tensor, f: Tensor, s: Tensor, totals: Stats, out: Tensor | None = None
    ) -> tuple[Tensor, Stats]:
        coef = totals["coef"]
        if s is r:
            return axpby(r, self.alpha - self.gamma * coef, (f, self.gamma), out=out), {}
        return axpby(r, self.alpha, (f, self.gamma), (s, -self.gamma * coef), out=out), {}

    def _finish(self, parts: list[Stats], totals: Stats) -> Stats:
        if not parts:
            return {}
        removed = self.gamma * totals["coef"].abs() * torch.sqrt(totals["n2"])
        return {"conflict_frac_tensor": (totals["d"] < 0).float(), "proj_norm": removed}


@dataclass(frozen=True)
class PCGradSymmetric(Combiner):
    """Original PCGrad (Yu et al., 2020) for two tasks, over all parameters.

    When ``<g_f, g_r> < 0``: ``g_r' = g_r - <g_r,g_f>/|g_f|² g_f`` and ``g_f' = g_f - <g_f,g_r>/|g_r|² g_r``;
    update ``alpha*g_r' + gamma*g_f'``. Guarantee: ``<update, g_r> >= 0`` and ``<update, g_f> >= 0``.
    Unlike the asymmetric variants it does modify the retain gradient.

    It refuses a ``reference`` (``train.retain_ema``) instead of ignoring it: Yu et al.'s rule tests
    and projects *both* task gradients against each other, and docs/methods.md §2's guarantee (neither task
    opposed) holds only for the raw pair. An EMA of ``g_r`` has no single faithful place in it
    (the sign test only? project onto the EMA? project the EMA?), and each reading loses that
    guarantee, so a silent choice would misreport what was run.
    """

    uses_reference: ClassVar[bool] = False
    needs_totals: ClassVar[bool] = True

    writes_out: ClassVar[bool] = True
    eps: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eps(self.eps)

    def _sums(self, r: Tensor, f: Tensor, s: Tensor) -> Stats:
        nr2, nf2 = sq_norms([r, f]).unbind()
        return {"d_j": dot(f, r), "nr2_j": nr2, "nf2_j": nf2}

    def _totals(self, sums: list[Stats]) -> Stats:
        d, nr2, nf2 = _total(sums, "d_j"), _total(sums, "nr2_j"), _total(sums, "nf2_j")
        cr, cf = _coef(d, nf2, self.eps), _coef(d, nr2, self.eps)
        return {"d": d, "nr2": nr2, "nf2": nf2, "cr": cr, "cf": cf}

    def _tensor(
        self, r: Tensor, f: Tensor, s: Tensor, totals: Stats, out: Tensor | None = None
    ) -> tuple[Tensor, Stats]:
        # alpha*(g_r - cr*g_f) + gamma*(g_f - cf*g_r) = (alpha - gamma*cf)*g_r + (gamma - alpha*cr)*g_f
        cr, cf = totals["cr"], totals["cf"]
        return axpby(r, self.alpha - self.gamma * cf, (f, self.gamma - self.alpha * cr), out=out), {}

    def _finish(self, parts: list[Stats], totals: Stats) -> Stats:
        if not parts:
            return {}
        t = totals
        removed = torch.sqrt((self.gamma * t["cf"]) ** 2 * t["nr2"] + (self.alpha * t["cr"]) ** 2 * t["nf2"])
        return {"conflict_frac_tensor": (t["d"] < 0).float(), "proj_norm": removed}
