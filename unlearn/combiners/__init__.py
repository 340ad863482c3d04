"""Gradient combiners: pure functions from ``(g_retain, g_forget)`` to one update (docs/methods.md §2)."""

from unlearn.combiners.base import Combination, Combiner
from unlearn.combiners.diagnostics import gradient_diagnostics
from unlearn.combiners.pcgrad import PCGrad, PCGradGlobal, PCGradSymmetric
from unlearn.combiners.sago import SAGO
from unlearn.combiners.sum import Sum

__all__ = [
    "Combination",
    "Combiner",
    "PCGrad",
    "PCGradGlobal",
    "PCGradSymmetric",
    "SAGO",
    "Sum",
    "gradient_diagnostics",
]
