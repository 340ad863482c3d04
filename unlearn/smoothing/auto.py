"""``rate: auto``: re-estimating SGA's smoothing rate ``r*`` from the gradients (spec §5).

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
import torch.distributed as dist
from torch import Tensor, nn

from unlearn.smoothing.sga import optimal_rate


def _grads(loss: Tensor, params: list[nn.Parameter], keep: bool) -> list[Tensor]:
    gs = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)]


def estimate_rate(smoothing: Any, forget: Callable[[nn.Module, Any], Tensor], model: nn.Module, batch: Mapping[str, Any]) -> float:
    """``r*`` on one batch (``forget`` rows and their ``normal`` groups), over the trainable
    parameters; averaged over ranks under data parallelism. Leaves ``.grad`` untouched."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_f = forget(model, batch["forget"])
    per_n = forget(model, batch["normal"]).view(per_f.shape[0], smoothing.K - 1)
    sign = 1.0 if smoothing.convention == "gls" else -1.0
    group = (per_f + sign * per_n.sum(-1)) / smoothing.K
    g_f = _grads(per_f.mean(), params, keep=True)
    g_bar = _grads(group.mean(), params, keep=False)
    r = optimal_rate(g_f, g_bar)
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([r], dtype=torch.float64, device=params[0].device)
        dist.all_reduce(t)
        r = float(t) / dist.get_world_size()
    return r
