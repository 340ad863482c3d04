"""Normal-data smoothing: Smoothed Gradient Ascent (SGA, docs/methods.md §5).

Each forget sample ``x_f`` is grouped with ``K−1`` normal samples ``x_n^j`` and the group is
weighted by generalised label smoothing at rate ``r`` (``r <= 1``): the forget sample gets
``1 − r + r/K`` and every normal sample ``r/K``. With ``F`` the per-sample forget loss (``−ℓ`` for
GA), the group loss is

- ``gls`` (default): ``w_f·F(x_f) + (r/K)·Σ_j F(x_n^j)``, i.e. ``−[(1−r+r/K)ℓ(x_f) + (r/K)Σℓ(x_n)]``
  for GA;
- ``ga_gd``: ``w_f·F(x_f) − (r/K)·Σ_j F(x_n^j)``, i.e. ascent on forget and descent on the normal
  samples for positive ``r``.

``r = 0`` is exactly the unsmoothed forget loss (and no normal sample is even drawn).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import Tensor, nn

from unlearn.hooks import Component
from unlearn.rules import is_int, is_number
from unlearn.smoothing.auto import estimate_rate

CONVENTIONS = ("gls", "ga_gd")


def _check_rate(rate: Any, key: str = "smoothing.rate") -> float:
    if not is_number(rate):
        raise ValueError(f"{key} must be a number <= 1 or 'auto', got {rate!r}")
    if not rate <= 1:
        raise ValueError(f"{key} must be <= 1 (the forget sample's weight 1 - r + r/K must stay >= 1/K), got {rate!r}")
    return float(rate)


class SGA(Component):
    """Generalised label smoothing over groups of one forget and ``K−1`` normal samples.

    ``rate`` is a number ``<= 1`` or ``"auto"`` (re-estimated from the gradients every
    ``auto_every`` steps, clipped to ``auto_range``; see :mod:`unlearn.smoothing.auto`).
    ``provider`` chooses the normal samples (random, retrieval, file).
    """

    def __init__(
        self,
        rate: float | str = 0.0,
        K: int = 4,
        convention: str = "gls",
        provider: Any = None,
        auto_every: int = 10,
        auto_range: tuple[float, float] | list[float] = (-1.0, 1.0),
        auto_init: float = 0.0,
    ) -> None:
        if isinstance(K, bool) or not isinstance(K, int) or K < 2:
            raise ValueError(f"smoothing.K must be an integer >= 2 (one forget + K-1 normal samples), got {K!r}")
        if convention not in CONVENTIONS:
            raise ValueError(f"smoothing.convention must be one of {CONVENTIONS}, got {convention!r}")
        lo, hi = (float(v) for v in auto_range)
        if not lo <= hi <= 1:
            raise ValueError(
                f"smoothing.auto_range must be [low, high] with low <= high <= 1, got {list(auto_range)!r}"
            )
        if not is_int(auto_every) or auto_every < 1:
            raise ValueError(f"smoothing.auto_every must be an integer >= 1, got {auto_every!r}")
        self.auto = rate == "auto"
        self.rate = _check_rate(auto_init, "smoothing.auto_init") if self.auto else _check_rate(rate)
        self.K = K
        self.convention = convention
        self.provider = provider
        self.auto_every = auto_every
        self.auto_range = (lo, hi)
        self.estimate: float | None = None  # the last unclipped r* (rate: auto)

    def __repr__(self) -> str:
        rate = "'auto'" if self.auto else self.rate
        return f"SGA(rate={rate}, K={self.K}, convention={self.convention!r}, provider={self.provider!r})"

    @property
    def active(self) -> bool:
        """Whether normal samples are needed at all (a fixed ``r = 0`` needs none)."""
        return self.auto or self.rate != 0.0

    def weights(self) -> tuple[float, float]:
        """``(w_forget, w_normal)`` = ``(1 − r + r/K, ±r/K)``, the sign from the convention."""
        r, K = self.rate, self.K
        w_n = r / K if self.convention == "gls" else -r / K
        return 1.0 - r + r / K, w_n

    def reduce(self, per_forget: Tensor, per_normal: Tensor | None) -> Tensor:
        """Batch loss from per-sample losses: ``per_forget [B]``, ``per_normal [B·(K−1)]``.

        Normal samples are laid out group by group (the K−1 of forget sample 0 first).
        """
        w_f, w_n = self.weights()
        loss = w_f * per_forget
        if per_normal is not None and w_n != 0.0:
            grouped = per_normal.view(per_forget.shape[0], self.K - 1)
            loss = loss + w_n * grouped.sum(-1)
        return loss.mean()

    def before_step(
        self, step: int, forget: Callable[[nn.Module, Any], Tensor] | None, model: nn.Module, batch: Mapping[str, Any]
    ) -> None:
        """``rate: auto``: every ``auto_every`` optimizer steps, re-estimate ``r*`` on this batch
        (see :mod:`unlearn.smoothing.auto`) and use it, clipped to ``auto_range``."""
        if not self.auto or forget is None or step % self.auto_every or "normal" not in batch:
            return
        self.estimate = estimate_rate(self, forget, model, batch)
        self.set_rate(self.estimate)

    def log_values(self) -> dict[str, float]:
        """``train/smoothing/rate`` every step (and the unclipped estimate under ``rate: auto``)."""
        out = {"train/smoothing/rate": self.rate}
        if self.estimate is not None:
            out["train/smoothing/rate_estimate"] = self.estimate
        return out

    def state_dict(self) -> dict[str, float]:
        return {"rate": self.rate}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rate = float(state["rate"])

    def set_rate(self, r: float) -> float:
        """Clip an estimate of ``r*`` to ``auto_range`` and use it from now on; returns the rate."""
        lo, hi = self.auto_range
        self.rate = float(min(max(r, lo), hi))
        return self.rate


class NoSmoothing(Component):
    """The ``none`` option: the plain mean of the per-sample forget losses."""

    active = False
    auto = False
    rate = 0.0
    K = 1
    provider = None

    def __repr__(self) -> str:
        return "NoSmoothing()"

    def reduce(self, per_forget: Tensor, per_normal: Tensor | None) -> Tensor:
        return per_forget.mean()
