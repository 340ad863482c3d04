"""Sweep job folder names a person can read: the swept keys stay, the fixed ones become a hash.

Hydra names a job by its overrides (``hydra.job.override_dirname``). Cut at a length, a sweep with a
few long fixed overrides loses the swept values (``optim.lr``, ``seed``) from every name. Here a
name that fits is kept whole; a longer one keeps the ``key=value`` of each swept key and replaces
the fixed overrides with an 8-hex hash of all of them, so names stay distinct for distinct jobs.

The swept keys are known only where the sweep starts (the command line's ``a=1,2`` and the
sweeper's ``params``), so :class:`SweptKeys`, a Hydra callback, records them there in an
environment variable that the job processes of every launcher inherit.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Iterable

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

ENV = "UNLEARN_SWEPT_KEYS"
LIMIT = 120


def safe_name(text: str, limit: int = LIMIT) -> str:
    """A folder-safe, bounded version of a string (paths and quotes become '_')."""
    s = re.sub(r"[^A-Za-z0-9=,._+-]+", "_", str(text)).strip("_")
    return s[:limit] or "default"


def split_items(text: str) -> list[str]:
    """``a=1,b=[x,y],c='p,q'`` → ``['a=1', 'b=[x,y]', "c='p,q'"]`` (commas inside brackets or quotes stay)."""
    items, depth, quote, cur = [], 0, "", ""
    for ch in str(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        cur += ch
    return [i for i in [*items, cur] if i]


def item_key(item: str) -> str:
    return item.split("=", 1)[0].lstrip("+~")


def job_dirname(overrides: str, swept: Iterable[str] | None = None, limit: int = LIMIT) -> str:
    """The folder name of a job with these overrides (``hydra.job.override_dirname``)."""
    items = split_items(overrides)
    whole = safe_name(",".join(items), limit=10**6)
    if len(whole) <= limit:
        return whole
    keys = set(os.environ.get(ENV, "").split(",") if swept is None else swept) - {""}
    tag = "h" + hashlib.sha1(",".join(items).encode()).hexdigest()[:8]
    readable = safe_name(",".join(i for i in items if item_key(i) in keys), limit=10**6)
    if readable == "default":
        readable = ""
    room = limit - len(tag) - 1
    if len(readable) > room:  # even the swept values alone are too long: cut them, the hash keeps names apart
        readable = readable[:room]
    return f"{readable},{tag}" if readable else tag


def swept_keys(task_overrides: Iterable[str], sweeper_params: Any = None) -> list[str]:
    """The keys a sweep varies: command-line sweep overrides (``a=1,2``, ``range()``, ``choice()``)
    and the keys of ``hydra.sweeper.params``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = set()
    for o in OverridesParser.create().parse_overrides(list(task_overrides)):
        if o.is_sweep_override():
            keys.add(o.key_or_group)
    keys |= {str(k) for k in dict(sweeper_params or {})}
    return sorted(keys)


class SweptKeys(Callback):
    """Records the sweep's varying keys for :func:`job_dirname` before any job starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        hc = config.hydra
        os.environ[ENV] = ",".join(swept_keys(list(hc.overrides.task), hc.sweeper.get("params")))
