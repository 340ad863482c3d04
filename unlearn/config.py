"""Configuration boundary: turning the composed Hydra config into objects, with clear errors.

Everything here runs before any model is built, so a typo or an out-of-range value costs seconds,
not a wasted job. Errors are :class:`ConfigError` and name the key and what is allowed.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

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


def check_complete(cfg: DictConfig) -> None:
    """Every ``???`` value must be filled in and every interpolation must resolve."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}: a value is required here (it is '???' in the config); set it on the command line, e.g. {key}=...") from e
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', '?')}: {e.msg if hasattr(e, 'msg') else e}") from e


def require(cfg: DictConfig, key: str, ok: Any, allowed: str) -> Any:
    """Fetch ``cfg.<key>`` and check it with ``ok(value)``; the error names the key and ``allowed``."""
    value = OmegaConf.select(cfg, key)
    try:
        good = bool(ok(value))
    except TypeError:
        good = False
    if not good:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    return value


def to_plain(node: Any) -> Any:
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def is_nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def is_pos_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


def validate(cfg: DictConfig) -> None:
    """Checks of the top-level keys; the component constructors check their own arguments."""
    check_complete(cfg)
    require(cfg, "task", lambda v: v in TASKS, f"one of {TASKS}")
    require(cfg, "seed", is_nonneg_int, "an integer >= 0")
    require(cfg, "train.steps", is_pos_int, "an integer > 0 (optimizer steps)")
    if cfg.train.get("epochs") is not None:
        require(cfg, "train.epochs", is_pos_number, "a number > 0 (passes over the forget set; replaces train.steps) or null")
    require(cfg, "train.batch_size", is_pos_int, "an integer > 0")
    require(cfg, "train.max_length", is_pos_int, "an integer > 0 (tokens)")
    require(cfg, "optim.lr", is_pos_number, "a number > 0")
