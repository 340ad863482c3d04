"""Diagnostics shared by every combiner: norms and cosines between g_r, g_f and the update.

They are sums over tensors, so they are computed per tensor (:func:`tensor_diagnostics`, a few
0-dim values) and reduced once (:func:`finish_diagnostics`): the training step can take each
tensor's share as soon as its update exists and keep no gradient tensor for them.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from unlearn.combiners.base import Grads, Stats, acc_dtype, conflicts_, dot, sq_norms

KEYS = (
    "conflict_frac",
    "norm_retain",
    "norm_forget",
    "norm_update",
    "cos_forget_retain",
    "cos_update_retain",
    "cos_update_forget",
)


def _cos(d: Tensor, na2: Tensor, nb2: Tensor) -> Tensor:
    denom = torch.sqrt(na2 * nb2)
    return torch.where(denom > 0, d / denom.clamp_min(1e-30), torch.zeros_like(d))


def tensor_diagnostics(r: Tensor, f: Tensor, u: Tensor) -> Stats:
    """One tensor's share of :func:`gradient_diagnostics`: squared norms, inner products, conflicts.

    ``<g_f, g_r>`` and the coordinates where ``g_f·g_r < 0`` come from one product (the only
    temporary), taken in fp32: a bf16 product would round every term to 8 significant bits.
    """
    p = f * r if f.dtype == acc_dtype(f) else f.to(acc_dtype(f)).mul_(r)
    nr2, nf2, nu2 = sq_norms([r, f, u]).unbind()
    d_fr = p.sum(dtype=torch.float32)
    n_conflict = conflicts_(p).sum(dtype=torch.float32)  # after d_fr: it overwrites the product
    return {
        "nr2": nr2,
        "nf2": nf2,
        "nu2": nu2,
        "d_fr": d_fr,
        "n_conflict": n_conflict,
        "d_ur": dot(u, r),
        "d_uf": dot(u, f),
        "numel": torch.tensor(f.numel()),
    }


def finish_diagnostics(parts: Sequence[Stats]) -> dict[str, Tensor]:
    """The logged diagnostics from the per-tensor shares (summed in the order given)."""
    if not parts:
        zero = torch.zeros(())
        return {k: zero for k in KEYS}
    t = {k: torch.stack([p[k] for p in parts]).sum() for k in parts[0] if k != "numel"}
    n_total = max(sum(int(p["numel"]) for p in parts), 1)
    return {
        "conflict_frac": t["n_conflict"].float() / n_total,
        "norm_retain": torch.sqrt(t["nr2"]),
        "norm_forget": torch.sqrt(t["nf2"]),
        "norm_update": torch.sqrt(t["nu2"]),
        "cos_forget_retain": _cos(t["d_fr"], t["nf2"], t["nr2"]),
        "cos_update_retain": _cos(t["d_ur"], t["nu2"], t["nr2"]),
        "cos_update_forget": _cos(t["d_uf"], t["nu2"], t["nf2"]),
    }


def gradient_diagnostics(g_r: Grads, g_f: Grads, update: Grads) -> dict[str, Tensor]:
    """Norms of and cosines between g_r, g_f and the update, and the coordinate conflict fraction.

    ``conflict_frac`` is the fraction of coordinates where ``g_f`` and ``g_r`` have opposite signs.

    All values are 0-dim fp32 tensors so that logging them does not force a device sync. Work is
    per tensor, with no whole-model temporaries.
    """
    return finish_diagnostics([tensor_diagnostics(r, f, u) for r, f, u in zip(g_r, g_f, update, strict=True)])
