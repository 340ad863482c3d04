"""The flattening alternative that :mod:`unlearn.combiners` avoid, kept only to benchmark against.

The usual way to write a gradient combiner is to concatenate every parameter's gradient into one
vector per task (``torch.cat``), do the math on the vectors, and split the result back. That
costs two full copies of the gradients per step (plus full-size temporaries for every elementwise
expression) where the per-tensor foreach code in :mod:`unlearn.combiners` needs none. These are
straightforward, correct implementations of the same rules, so the benchmark compares like with
like; they compute the same update and diagnostics as the real combiners.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Grads = Sequence[Tensor]


def flat(ts: Grads) -> Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def unflat(v: Tensor, like: Grads) -> list[Tensor]:
    return [x.view_as(t) for x, t in zip(torch.split(v, [t.numel() for t in like]), like, strict=True)]


def segment_sums(v: Tensor, like: Grads) -> Tensor:
    return torch.stack([x.sum() for x in torch.split(v, [t.numel() for t in like])])


def flat_sum(g_r: Grads, g_f: Grads, alpha: float = 1.0, gamma: float = 1.0) -> list[Tensor]:
    return unflat(alpha * flat(g_r) + gamma * flat(g_f), g_r)


def flat_pcgrad(g_r: Grads, g_f: Grads, alpha: float = 1.0, gamma: float = 1.0) -> list[Tensor]:
    """Per-tensor PCGrad on flattened vectors: segment dot products, one projection vector."""
    r, f = flat(g_r), flat(g_f)
    d, n2 = segment_sums(f * r, g_r), segment_sums(r * r, g_r)
    coef = torch.where((d < 0) & (n2 > 0), d / n2.clamp_min(1e-30), torch.zeros_like(d))
    coef_full = torch.repeat_interleave(coef, torch.tensor([t.numel() for t in g_r]))
    return unflat(alpha * r + gamma * (f - coef_full * r), g_r)


def flat_sago(g_r: Grads, g_f: Grads, alpha: float = 1.0, gamma: float = 1.0) -> list[Tensor]:
    r, f = flat(g_r), flat(g_f)
    return unflat(torch.where(f * r < 0, alpha * r, gamma * f), g_r)


def flat_diagnostics(g_r: Grads, g_f: Grads, update: Grads) -> dict[str, Tensor]:
    r, f, u = flat(g_r), flat(g_f), flat(update)
    nr, nf, nu = r.norm(), f.norm(), u.norm()
    return {
        "conflict_frac": ((f * r) < 0).float().mean(),
        "norm_retain": nr,
        "norm_forget": nf,
        "norm_update": nu,
        "cos_forget_retain": f @ r / (nf * nr),
        "cos_update_retain": u @ r / (nu * nr),
        "cos_update_forget": u @ f / (nu * nf),
    }


FLAT: dict[str, Callable[..., list[Tensor]]] = {"sum": flat_sum, "pcgrad": flat_pcgrad, "sago": flat_sago}
