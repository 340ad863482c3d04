"""PCGrad-style projections of the forget gradient away from the retain gradient.

``PCGrad`` is the asymmetric, per-tensor ("module-wise") adaptation used by the SAGO paper
(Retention-first gradient synthesis, spec §2); ``PCGradGlobal`` is the same projection with one dot
product over all parameters (what GRU does); ``PCGradSymmetric`` is the original two-task PCGrad of
Yu et al. (2020), which projects each task's gradient onto the other's normal plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unlearn.combiners.base import Combination, Combiner, dots, sq_norms, weighted_sum


def _check_eps(eps: float) -> None:
    if not eps >= 0:
        raise ValueError(f"combiner.eps must be >= 0, got {eps!r}")


def _ratio(num: Tensor, den: Tensor, eps: float) -> Tensor:
    """``num / (den + eps)``, and 0 where ``den + eps`` is 0 (a zero retain gradient has nothing
    to project onto). With ``eps = 0`` (default) the projection is exact, which the guarantee needs."""
    den = den + eps
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


@dataclass(frozen=True)
class PCGrad(Combiner):
    """Per tensor ``j``: if ``<g_f^j, r^j> < 0`` remove the component of ``g_f^j`` along ``r^j``.

    ``r`` is ``g_r`` (or the ``reference`` passed in). Update ``alpha*g_r^j + gamma*g̃_f^j``.
    Guarantee: ``<update^j, g_r^j> >= 0`` for every tensor when ``alpha, gamma >= 0`` and no
    reference is used. ``g_r`` is never modified.
    """

    eps: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eps(self.eps)

    def _combine(self, g_r: list[Tensor], g_f: list[Tensor], ref: list[Tensor]) -> Combination:
        if not g_r:
            return Combination([])
        d = dots(g_f, ref)
        n2 = sq_norms(ref)
        coef = torch.where(d < 0, _ratio(d, n2, self.eps), torch.zeros_like(d))
        # g̃_f = g_f - coef*ref, so the update is alpha*g_r + gamma*g_f - gamma*coef*ref: with
        # ref = g_r that is a per-tensor weight on g_r, and no tensor beyond the update is allocated.
        c = coef.tolist()
        if all(s is r for s, r in zip(ref, g_r)):
            update = weighted_sum(g_r, [self.alpha - self.gamma * cj for cj in c], g_f, self.gamma)
        else:
            update = weighted_sum(g_r, self.alpha, g_f, self.gamma)
            for u, s, cj in zip(update, ref, c):
                if cj:
                    u.add_(s, alpha=-self.gamma * cj)
        removed = self.gamma * torch.sqrt((coef**2 * n2).sum())
        return Combination(update, {"conflict_frac_tensor": (d < 0).float().mean(), "proj_norm": removed})


@dataclass(frozen=True)
class PCGradGlobal(Combiner):
    """One projection over all parameters at once. Guarantee: ``<update, g_r> >= 0`` globally."""

    eps: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eps(self.eps)

    def _combine(self, g_r: list[Tensor], g_f: list[Tensor], ref: list[Tensor]) -> Combination:
        if not g_r:
            return Combination([])
        d = dots(g_f, ref).sum()
        n2 = sq_norms(ref).sum()
        coef = float(_ratio(d, n2, self.eps)) if d < 0 else 0.0
        update = weighted_sum(g_r, self.alpha, g_f, self.gamma)
        if coef != 0.0:
            torch._foreach_add_(update, ref, alpha=-self.gamma * coef)
        removed = self.gamma * abs(coef) * torch.sqrt(n2)
        return Combination(update, {"conflict_frac_tensor": (d < 0).float(), "proj_norm": removed})


@dataclass(frozen=True)
class PCGradSymmetric(Combiner):
    """Original PCGrad (Yu et al., 2020) for two tasks, over all parameters.

    When ``<g_f, g_r> < 0``: ``g_r' = g_r - <g_r,g_f>/|g_f|² g_f`` and ``g_f' = g_f - <g_f,g_r>/|g_r|² g_r``;
    update ``alpha*g_r' + gamma*g_f'``. Guarantee: ``<update, g_r> >= 0`` and ``<update, g_f> >= 0``.
    Unlike the asymmetric variants it does modify the retain gradient.

    It refuses a ``reference`` (``train.retain_ema``) instead of ignoring it: Yu et al.'s rule tests
    and projects *both* task gradients against each other, and spec §2's guarantee (neither task
    opposed) holds only for the raw pair. An EMA of ``g_r`` has no single faithful place in it
    (the sign test only? project onto the EMA? project the EMA?), and each reading loses that
    guarantee, so a silent choice would misreport what was run.
    """

    uses_reference: ClassVar[bool] = False

    eps: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_eps(self.eps)

    def _combine(self, g_r: list[Tensor], g_f: list[Tensor], ref: list[Tensor]) -> Combination:
        if not g_r:
            return Combination([])
        d = dots(g_f, g_r).sum()
        nr2, nf2 = sq_norms(g_r).sum(), sq_norms(g_f).sum()
        if d < 0:
            cr, cf = float(_ratio(d, nf2, self.eps)), float(_ratio(d, nr2, self.eps))
        else:
            cr = cf = 0.0
        # alpha*(g_r - cr*g_f) + gamma*(g_f - cf*g_r) = (alpha - gamma*cf)*g_r + (gamma - alpha*cr)*g_f
        update = weighted_sum(g_r, self.alpha - self.gamma * cf, g_f, self.gamma - self.alpha * cr)
        removed = torch.sqrt((self.gamma * cf) ** 2 * nr2 + (self.alpha * cr) ** 2 * nf2)
        return Combination(update, {"conflict_frac_tensor": (d < 0).float(), "proj_norm": removed})
