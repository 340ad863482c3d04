"""The one base of loss components and smoothers: every hook exists and does nothing.

The objective and the module call every hook of every component unconditionally, so a component
overrides only what it needs and nobody probes for methods. This is one base with no-op hooks, not
a class tree: components stay small callables (style.md, "Loss components"). It sits at the top of
the package, below both ``losses/`` and ``smoothing/`` (``losses/objective.py`` imports the
smoothers), and imports nothing from ``unlearn``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import Tensor, nn

LossFn = Callable[[nn.Module, Mapping[str, Any]], Tensor]


class Component:
    """A loss component is called as ``component(model, batch) -> Tensor[B]`` (per-sample values to
    minimise); a smoother instead reduces them (:mod:`unlearn.smoothing`). The hooks:

    - ``prepare(ctx)``: once before training (NPO caches reference log-probabilities there);
    - ``before_step(step, forget, model, batch)``: once per optimizer step, before its first
      micro-batch; ``forget`` is the forget task's loss component (what SGA's ``rate: auto``
      differentiates), ``None`` without a forget task;
    - ``log_values()``: numbers to log every step, under namespaced keys;
    - ``state_dict()`` / ``load_state_dict(state)``: what a resumed run must restore.
    """

    #: runs the frozen starting model during training (read by ``unlearn.training.fsdp.check_sharded``)
    runs_reference: bool = False

    def prepare(self, ctx: Any) -> None:
        return None

    def before_step(self, step: int, forget: LossFn | None, model: nn.Module, batch: Mapping[str, Any]) -> None:
        return None

    def log_values(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class Adapted(Component):
    """A plain callable (a function, or a class written without :class:`Component`, as in the
    extension example in docs/extending.md) given the component interface. The optional hooks it defines are
    looked up once, here at the boundary, so the rest of the code calls hooks without probing.
    Other attributes read through to the wrapped object.
    """

    _HOOKS = ("prepare", "before_step", "log_values", "state_dict", "load_state_dict")

    def __init__(self, fn: Callable[..., Any]) -> None:
        if not callable(fn):
            raise TypeError(f"a loss component must be callable as component(model, batch), got {fn!r}")
        self.fn = fn
        for name in self._HOOKS:
            hook = getattr(fn, name, None)
            if callable(hook):
                setattr(self, name, hook)  # the instance attribute shadows the no-op
        self.runs_reference = bool(getattr(fn, "runs_reference", False))

    def __call__(self, model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
        return self.fn(model, batch)

    def __getattr__(self, name: str) -> Any:  # only called for names not found on the adapter
        if name == "fn":
            raise AttributeError(name)
        return getattr(self.fn, name)

    def __repr__(self) -> str:
        return repr(self.fn)


def as_component(obj: Any) -> Any:
    """``obj`` itself when it is a :class:`Component` (or ``None``, no task); otherwise adapted."""
    if obj is None or isinstance(obj, Component):
        return obj
    return Adapted(obj)
