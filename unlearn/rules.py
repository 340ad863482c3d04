"""How a value rule is written down: a predicate and the words for what it allows.

A rule is stated once, next to the setting it governs: in the field metadata of a typed section
(:mod:`unlearn.schema`) or in :data:`unlearn.validation.RULES` for the untyped rest. Types are the
schema's job (OmegaConf refuses ``train.steps=2.5`` at composition); a rule checks what a type
cannot say: ranges, finiteness, allowed strings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, TypeGuard

SEED_MAX = 2**32 - 1  # numpy's RandomState accepts 0 ... 2**32 - 1


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    allowed: str
    inf_ok: bool = False  # .inf has a meaning for this key (e.g. "no limit")

    def problem(self, key: str, value: Any) -> str | None:
        """``"<key> must be <allowed>, got <value>"``, or None when ``value`` passes."""
        try:
            passed = bool(self.ok(value))
        except TypeError:
            passed = False
        return None if passed else f"{key} must be {self.allowed}, got {value!r}"


def is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def num(
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    null: bool = False,
    inf_ok: bool = False,
    what: str = "",
) -> Rule:
    def ok(v: Any) -> bool:
        if v is None:
            return null
        if not is_number(v) or math.isnan(v) or (math.isinf(v) and not inf_ok):
            return False
        return (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))

    if lo is not None and hi is not None:
        rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        rng = "finite"
    notes = "; ".join(n for n in ("" if inf_ok else "finite", what) if n)
    return Rule(ok, f"a number {rng}{f' ({notes})' if notes else ''}{' or null' if null else ''}", inf_ok)


def integer(lo: int = 0, hi: int | None = None, null: bool = False, what: str = "") -> Rule:
    def ok(v: Any) -> bool:
        return (v is None and null) or (is_int(v) and v >= lo and (hi is None or v <= hi))

    rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}" if lo != 1 else "> 0"
    return Rule(ok, f"an integer {rng}{f' ({what})' if what else ''}{' or null' if null else ''}")


def choice(*values: Any, null: bool = False) -> Rule:
    return Rule(
        lambda v: (v is None and null) or (isinstance(v, (str, int)) and not isinstance(v, bool) and v in values),
        f"one of {values}{' or null' if null else ''}",
    )


def kind(*types_: type, what: str, null: bool = False) -> Rule:
    return Rule(
        lambda v: (v is None and null) or (isinstance(v, types_) and not (isinstance(v, bool) and bool not in types_)),
        what + (" or null" if null else ""),
    )


ANY = Rule(lambda v: True, "anything")
BOOL = kind(bool, what="true or false")
STR = kind(str, what="a string")
SEED = integer(0, SEED_MAX, what="numpy's seed range")


def setting(
    default: Any = dataclasses.MISSING, rule: Rule | None = None, factory: Callable[[], Any] | None = None
) -> Any:
    """A dataclass field that carries its :class:`Rule` (``None``: the type says all there is)."""
    meta = {"rule": rule} if rule is not None else {}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def field_rules(cls: type) -> dict[str, Rule]:
    """Each field of dataclass ``cls`` with its rule (:data:`ANY` where the type is the whole rule)."""
    return {f.name: f.metadata.get("rule", ANY) for f in dataclasses.fields(cls)}


def problems_of(obj: Any, prefix: str) -> list[str]:
    """Every field of ``obj`` that breaks its rule, as messages naming ``<prefix>.<field>``."""
    found = (rule.problem(f"{prefix}.{name}", getattr(obj, name)) for name, rule in field_rules(type(obj)).items())
    return [p for p in found if p is not None]


def refuse_invalid(obj: Any, prefix: str) -> None:
    """Raise ``ValueError`` listing the fields of ``obj`` that break their rules (for direct construction)."""
    found = problems_of(obj, prefix)
    if found:
        raise ValueError("; ".join(found))
