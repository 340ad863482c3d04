"""Diagnostics shared by every combiner: norms and cosines between g_r, g_f and the update."""

from __future__ import annotations

import torch
from torch import Tensor

from unlearn.combiners.base import Grads, acc_dtype, dots, sq_norms


def _cos(d: Tensor, na2: Tensor, nb2: Tensor) -> Tensor:
    denom = torch.sqrt(na2 * nb2)
    return torch.where(denom > 0, d / denom.clamp_min(1e-30), torch.zeros_like(d))


def _dot_and_conflicts(g_f: Grads, g_r: Grads) -> tuple[Tensor, Tensor]:
    """``<g_f, g_r>`` (fp32) and the number of coordinates where ``g_f·g_r < 0``, from one product
    per tensor (the only temporary, freed before the next tensor). The product is taken in fp32:
    a bf16 product would round every term of the dot product to 8 significant bits."""
    d = torch.zeros((), dtype=torch.float32, device=g_f[0].device)
    n = torch.zeros((), dtype=torch.int64, device=g_f[0].device)
    for f, r in zip(g_f, g_r):
        p = f * r if f.dtype == acc_dtype(f) else f.to(acc_dtype(f)).mul_(r)
        d += p.sum(dtype=torch.float32)
        n += torch.count_nonzero(p < 0)  # not (p < 0).sum(): that casts the mask to int64 first
    return d, n


def gradient_diagnostics(g_r: Grads, g_f: Grads, update: Grads) -> dict[str, Tensor]:
    """Norms of and cosines between g_r, g_f and the update, and the coordinate conflict fraction.

    ``conflict_frac`` is the fraction of coordinates where ``g_f`` and ``g_r`` have opposite signs.

    All values are 0-dim fp32 tensors so that logging them does not force a device sync. Work is
    per tensor (foreach norms, one product per tensor), with no whole-model temporaries.
    """
    if not g_f:
        zero = torch.zeros(())
        return {k: zero for k in ("conflict_frac", "norm_retain", "norm_forget", "norm_update", "cos_forget_retain", "cos_update_retain", "cos_update_forget")}
    nr2, nf2, nu2 = sq_norms(g_r).sum(), sq_norms(g_f).sum(), sq_norms(update).sum()
    d_fr, n_conflict = _dot_and_conflicts(g_f, g_r)
    d_ur = dots(update, g_r).sum()
    d_uf = dots(update, g_f).sum()
    n_total = max(sum(f.numel() for f in g_f), 1)
    return {
        "conflict_frac": n_conflict.float() / n_total,
        "norm_retain": torch.sqrt(nr2),
        "norm_forget": torch.sqrt(nf2),
        "norm_update": torch.sqrt(nu2),
        "cos_forget_retain": _cos(d_fr, nf2, nr2),
        "cos_update_retain": _cos(d_ur, nu2, nr2),
        "cos_update_forget": _cos(d_uf, nu2, nf2),
    }
