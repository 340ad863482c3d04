"""The plain weighted sum: the classic gradient-difference (GD) update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from unlearn.combiners.base import Combiner, Stats, axpby


@dataclass(frozen=True)
class Sum(Combiner):
    """``update = alpha * g_r + gamma * g_f``; equals ``∇(gamma·L_f + alpha·L_r)``. No guarantee."""

    uses_reference: ClassVar[bool] = False  # no conflict test: an EMA of g_r would change nothing
    writes_out: ClassVar[bool] = True

    def _tensor(
        self, r: Tensor, f: Tensor, s: Tensor, totals: Stats, out: Tensor | None = None
    ) -> tuple[Tensor, Stats]:
        return axpby(r, self.alpha, (f, self.gamma), out=out), {}
