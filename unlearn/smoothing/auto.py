"""``rate: auto``: re-estimating SGA's smoothing rate ``r*`` from the gradients (docs/methods.md §5).

This module sits below :mod:`unlearn.smoothing.sga` (which calls it), so it knows the smoother only
by the two attributes it reads, ``K`` and ``convention``.

With ``F`` the per-sample forget loss and ``s = +1`` (``gls``) or ``−1`` (``ga_gd``), the smoothed
group loss is ``F(x_f) + r·(ḡ-loss − F(x_f))`` where the ḡ-loss ``(F(x_f) + s·Σ_j F(x_n^j))/K`` is
the group's mean (signed as the convention weights it). Its gradient is ``d(r) = g_f + r·(ḡ − g_f)``
and the ``r`` of smallest ``‖d(r)‖`` is ``r* = ⟨g_f, g_f − ḡ⟩ / ‖g_f − ḡ‖²``. This is our
reconstruction of the SGA paper's derivation (the paper only uses the sign of ``r*`` to pick a
grid-search range); ``ga_gd``'s signed ḡ is our extension of it to that convention.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from unlearn.distributed import all_reduce_mean


def _grads(loss: Tensor, params: list[nn.Parameter], keep: bool) -> list[Tensor]:
    gs = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
    # contiguous: autograd may hand back an expanded view (stride 0), which all-reduce cannot write
    return [torch.zeros_like(p) if g is None else g.contiguous() for g, p in zip(gs, params, strict=True)]


def optimal_rate(g_f: list[Tensor], g_bar: list[Tensor]) -> float:
    """``r* = <g_f, g_f − ḡ> / ‖g_f − ḡ‖²`` (docs/methods.md §5; a reconstruction of the SGA paper's derivation).

    Minimises the norm of the one-step update ``d(r) = g_f + r·(ḡ − g_f)``. ``g_f`` is the gradient
    of the forget samples' loss, ``ḡ`` the mean gradient over the K samples of each group.
    """
    num = torch.zeros((), dtype=torch.float64)
    den = torch.zeros((), dtype=torch.float64)
    for f, b in zip(g_f, g_bar, strict=True):
        d = (f - b).double()
        num += (f.double() * d).sum()
        den += (d * d).sum()
    return float(num / den) if den > 0 else 0.0


def estimate_rate(
    smoothing: Any, forget: Callable[[nn.Module, Any], Tensor], model: nn.Module, batch: Mapping[str, Any]
) -> float:
    """``r*`` on one batch (``forget`` rows and their ``normal`` groups), over the trainable
    parameters. Leaves ``.grad`` untouched.

    Under data parallelism ``g_f`` and ``ḡ`` are averaged across ranks first (docs/methods.md §1: estimates
    come from the all-reduced gradients), so every rank gets the ``r*`` of the global batch. ``r*``
    is a ratio of quadratic forms, so the mean of per-rank ``r*`` would be a different number.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    per_f = forget(model, batch["forget"])
    per_n = forget(model, batch["normal"]).view(per_f.shape[0], smoothing.K - 1)
    sign = 1.0 if smoothing.convention == "gls" else -1.0
    group = (per_f + sign * per_n.sum(-1)) / smoothing.K
    g_f = _grads(per_f.mean(), params, keep=True)
    g_bar = _grads(group.mean(), params, keep=False)
    all_reduce_mean(g_f + g_bar)  # in place; a no-op in one process
    return optimal_rate(g_f, g_bar)
