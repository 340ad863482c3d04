"""SAGO: retention-first, element-wise gradient synthesis (docs/methods.md §2).

For each coordinate the forget gradient is used unless it conflicts in sign with the retain
gradient, in which case the (weighted) retain gradient is used instead. Being element-wise it needs
no dot products, so it is exact on sharded gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from unlearn.combiners.base import Combiner, Stats, conflicts_

_GATES = ("hard", "soft", "soft_raw")


def _soft_gate(f: Tensor, r: Tensor, kappa: float, normalise: bool = True, scale: Tensor | None = None) -> Tensor:
    """``σ(κ·p̂)`` with ``p̂ = (g_f⊙r) / mean|g_f⊙r|`` (``gate: soft``), or docs/methods.md §2's literal
    ``σ(κ·g_f⊙r)`` with ``normalise=False`` (``gate: soft_raw``).

    A deliberate deviation from docs/methods.md §2 in the default soft gate: raw gradient products are tiny
    (~1e-8) and their scale differs by layer and changes as training goes, so with the literal
    formula one ``kappa`` is either ~0 everywhere (``w ≈ 1/2``: a plain average, no gating) or must
    be tuned per model, layer and step. Normalising per tensor makes ``kappa`` a unitless
    sharpness, the gate invariant to rescaling the gradients, and ``kappa → ∞`` the hard gate.

    ``scale``: the whole tensor's mean ``|g_f⊙r|`` when ``f`` and ``r`` are one shard of it.
    """
    p = f.float() * r.float()
    if not normalise:
        return torch.sigmoid(kappa * p)
    scale = (p.abs().mean() if scale is None else scale).clamp_min(torch.finfo(torch.float32).tiny)
    return torch.sigmoid(kappa * p / scale)


@dataclass(frozen=True)
class SAGO(Combiner):
    """Per coordinate ``i``: ``alpha*g_r^i`` if ``g_f^i·r^i < 0`` (conflict), else ``gamma*g_f^i``.

    ``r`` is ``g_r`` (or the ``reference`` passed in); a zero product is no conflict.
    ``prefer_retain=True`` is the official code's ablation: ``gamma*g_f^i + alpha*g_r^i`` where
    there is no conflict. Guarantee (hard gate, no reference): ``update^i · g_r^i >= 0`` for every
    coordinate. ``gate="soft"`` mixes ``w·gamma·g_f + (1−w)·alpha·g_r`` with ``w = σ(κ·p̂)``, where
    ``p̂`` is ``g_f⊙r`` normalised per tensor by its mean absolute value: a deliberate deviation
    from docs/methods.md §2's ``σ(κ·g_f⊙g_r)``, which ``gate="soft_raw"`` implements literally (see
    :func:`_soft_gate` for why the normalised gate is the default). Soft gates trade the sign
    guarantee for smoothness; each coordinate of their update lies between ``alpha*g_r^i`` and
    the no-conflict value. ``soft`` is positively homogeneous, ``soft_raw`` is not.
    """

    writes_out: ClassVar[bool] = True
    prefer_retain: bool = False
    gate: str = "hard"
    kappa: float = 5.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.gate not in _GATES:
            raise ValueError(f"combiner.gate must be one of {_GATES}, got {self.gate!r}")
        if not self.kappa > 0:
            raise ValueError(f"combiner.kappa must be > 0, got {self.kappa!r}")

    @property
    def needs_sums(self) -> bool:
        return self.gate == "soft"  # its per-tensor scale; the hard gate and soft_raw are element-wise

    def _sums(self, r: Tensor, f: Tensor, s: Tensor) -> Stats:
        """The normalised soft gate's scale is the tensor's mean ``|g_f⊙s|``: its sum and count."""
        if self.gate != "soft":
            return {}
        return {
            "abs_fs": (f.float() * s.float()).abs().sum(),
            "numel_fs": torch.tensor(float(f.numel()), dtype=torch.float64),
        }

    def _tensor(
        self, r: Tensor, f: Tensor, s: Tensor, totals: Stats, out: Tensor | None = None
    ) -> tuple[Tensor, Stats]:
        # The temporaries (the product, the gate) are the size of this tensor, never of the model.
        # ``out`` (None, or r): the conflict test reads s (which may be r) before r is overwritten.
        if self.gate == "hard":
            # The select as a lerp by the 0/1 conflicts (fast on a CPU, see conflicts_): a lerp by
            # exactly 0 or 1 returns that end exactly, so this is torch.where(f·s < 0, ...) bit for
            # bit on finite gradients (tested). An inf or NaN in either gradient gives NaN (0·inf)
            # where the select could hide it: the divergence guard then stops the run.
            conflict = conflicts_(f * s)
            update = torch.lerp(self._keep(r, f), _scaled(r, self.alpha), conflict.to(r.dtype), out=out)
            gated = conflict.sum(dtype=torch.float32).double()
        else:
            scale = (totals["abs_fs"] / totals["numel_fs"]).float() if self.gate == "soft" else None
            w = _soft_gate(f, s, self.kappa, normalise=self.gate == "soft", scale=scale).to(f.dtype)
            update = torch.lerp(_scaled(r, self.alpha), self._keep(r, f), w, out=out)
            gated = (1 - w).double().sum()
        return update, {"gated": gated, "numel": torch.tensor(f.numel())}

    def _finish(self, parts: list[Stats], totals: Stats) -> Stats:
        if not parts:
            return {"gated_frac": torch.zeros(())}
        n_gated = torch.stack([p["gated"] for p in parts]).sum()
        n_total = sum(int(p["numel"]) for p in parts)
        return {"gated_frac": (n_gated / max(n_total, 1)).float()}

    def _keep(self, r: Tensor, f: Tensor) -> Tensor:
        """The update where there is no conflict: ``gamma*g_f`` (+ ``alpha*g_r`` with prefer_retain)."""
        if self.prefer_retain:
            return torch.add(_scaled(f, self.gamma), r, alpha=self.alpha)
        return _scaled(f, self.gamma)


def _scaled(t: Tensor, w: float) -> Tensor:
    """``w * t``, without a copy when ``w`` is 1 (the result is only read, never written)."""
    return t if w == 1.0 else t * w
