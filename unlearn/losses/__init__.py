"""Loss components: small per-sample callables composed by config (docs/methods.md §3–4)."""

from unlearn.hooks import Component
from unlearn.losses.ga import GA
from unlearn.losses.idk import IDK
from unlearn.losses.kl import KL
from unlearn.losses.nll import NLL, no_loss
from unlearn.losses.npo import NPO
from unlearn.losses.objective import Objective
from unlearn.losses.rmu import RMU, RMURetain
from unlearn.losses.simnpo import SimNPO

__all__ = ["GA", "Component", "IDK", "KL", "NLL", "NPO", "Objective", "RMU", "RMURetain", "SimNPO", "no_loss"]
