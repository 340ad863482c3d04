"""Normal-data smoothing (SGA) and the providers of normal samples."""

from unlearn.smoothing.auto import estimate_rate, optimal_rate
from unlearn.smoothing.providers import FileNormal, NormalGroups, RandomNormal
from unlearn.smoothing.retrieval import RetrievalNormal
from unlearn.smoothing.sga import SGA, NoSmoothing

__all__ = [
    "SGA",
    "FileNormal",
    "NoSmoothing",
    "NormalGroups",
    "RandomNormal",
    "RetrievalNormal",
    "estimate_rate",
    "optimal_rate",
]
