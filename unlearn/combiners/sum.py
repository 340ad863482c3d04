"""The plain weighted sum: the classic gradient-difference (GD) update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from unlearn.combiners.base import Combination, Combiner, weighted_sum


@dataclass(frozen=True)
class Sum(Combiner):
    """``update = alpha * g_r + gamma * g_f``; equals ``∇(gamma·L_f + alpha·L_r)``. No guarantee."""

    uses_reference: ClassVar[bool] = False  # no conflict test: an EMA of g_r would change nothing

    def _combine(self, g_r: list[Tensor], g_f: list[Tensor], ref: list[Tensor]) -> Combination:
        return Combination(weighted_sum(g_r, self.alpha, g_f, self.gamma))
