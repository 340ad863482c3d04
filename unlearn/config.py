"""Configuration boundary: turning the composed Hydra config into objects, with clear errors.

Everything here runs before any model is built, so a typo or an out-of-range value costs seconds,
not a wasted job. Errors are :class:`ConfigError` and name the key and what is allowed; the
validation pass that collects all of them is :mod:`unlearn.validation`.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

TASKS = ("unlearn", "finetune", "eval")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range; raised before training starts."""

    kind = "config error"


def _root_cause(e: BaseException) -> BaseException:
    while isinstance(e, InstantiationException) and e.__cause__ is not None:
        e = e.__cause__
    return e


def build(cfg: DictConfig, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of ``cfg.<key>``, with any failure reported against ``key``."""
    node = OmegaConf.select(cfg, key, throw_on_missing=False)
    if node is None:
        return None
    try:
        return instantiate(node, **kwargs)
    except (InstantiationException, ValueError, TypeError) as e:
        cause = _root_cause(e)
        msg = str(cause)
        if isinstance(cause, TypeError) and "unexpected keyword argument" in msg:
            msg = f"{msg} (check the keys under {key!r})"
        raise ConfigError(f"{key}: {msg}") from e


def to_plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node
