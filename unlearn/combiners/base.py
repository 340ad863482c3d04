"""Shared shape of every gradient combiner.

A combiner maps the retain-task gradient ``g_r`` and the forget-task gradient ``g_f`` (two lists of
tensors, one per trainable parameter, same shapes) to one update (a list of the same shapes).
Combiners are pure: no model, no optimizer, no state, no logging. Diagnostics come back in
:class:`Combination.stats` and the training module logs them.

The retain weight ``alpha`` and forget weight ``gamma`` are applied *inside* the combiner
(docs/methods.md §1): the losses themselves are unweighted.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
from torch import Tensor

from unlearn.rules import is_number

Grads = Sequence[Tensor]


@dataclass(frozen=True)
class Combination:
    """What a combiner returns: the update (one tensor per parameter) and its diagnostics.

    ``stats`` maps short names (``conflict_frac``, ``proj_norm``...) to 0-dim tensors; the module
    namespaces them under ``train/grad/``.
    """

    update: list[Tensor]
    stats: dict[str, Tensor] = field(default_factory=dict)


def check_weight(name: str, value: float) -> float:
    """Validate a combiner weight at the boundary (negative weights flip the task's direction)."""
    if not is_number(value):
        raise ValueError(f"combiner.{name} must be a number, got {value!r}")
    if value < 0:
        raise ValueError(f"combiner.{name} must be >= 0, got {value!r}")
    return float(value)


def check_pair(g_r: Grads, g_f: Grads) -> None:
    if len(g_r) != len(g_f):
        raise ValueError(f"g_retain has {len(g_r)} tensors but g_forget has {len(g_f)}")
    for i, (r, f) in enumerate(zip(g_r, g_f, strict=True)):
        if r.shape != f.shape:
            raise ValueError(f"tensor {i}: g_retain shape {tuple(r.shape)} != g_forget shape {tuple(f.shape)}")


def acc_dtype(t: Tensor) -> torch.dtype:
    """The dtype reductions over ``t`` accumulate in: fp32, or fp64 for fp64 input (never lower).

    bf16/fp16 gradients must not give bf16 dot products or norms: PCGrad divides by ``‖g_r‖²``,
    and a norm rounded to 8 significant bits leaves a residual conflict of up to ~2⁻⁸·|<g_f,g_r>|.
    """
    return torch.promote_types(t.dtype, torch.float32)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Inner product of two same-shaped tensors in at least fp32 (a per-tensor upcast at most)."""
    if a.dtype == b.dtype == torch.float32:  # the common case, without the dtype work (per tensor, in the backward)
        return torch.dot(a.reshape(-1), b.reshape(-1))
    dt = torch.promote_types(acc_dtype(a), acc_dtype(b))
    return torch.dot(a.reshape(-1).to(dt), b.reshape(-1).to(dt))


def conflicts_(p: Tensor) -> Tensor:
    """The product ``p = g_f ⊙ r`` overwritten with 1.0 where ``p < 0`` (a conflict) and 0.0
    elsewhere: SAGO's gate weight, and summed, the conflict count.

    On a CPU, ``<`` into a bool tensor and ``torch.where``/``count_nonzero`` on one are not
    vectorised: ~8× this on a 256×1024 tensor (606 µs against 76 µs for SAGO's hard gate on the
    project's 2-core VM). A 0/1 float weight keeps every pass vectorised; its sum is exact up to
    2**24 per tensor. On a GPU both forms are one pass.
    """
    return torch.lt(p, 0, out=p)


def dots(a: Grads, b: Grads) -> Tensor:
    """Per-tensor inner products, shape ``[len(a)]``."""
    if not a:
        return torch.zeros(0)
    return torch.stack([dot(x, y) for x, y in zip(a, b, strict=True)])


def sq_norms(a: Grads) -> Tensor:
    """Per-tensor squared L2 norms accumulated in at least fp32, shape ``[len(a)]``.

    ``_foreach_norm``'s ``dtype`` makes it accumulate in that dtype tensor by tensor, so a bf16
    model gets fp32 norms without an fp32 copy of all its gradients at once.
    """
    if not a:
        return torch.zeros(0)
    dt = torch.float64 if any(t.dtype == torch.float64 for t in a) else torch.float32
    return torch.stack(torch._foreach_norm(list(a), 2, dtype=dt)) ** 2


def weighted_sum(a: Grads, wa: Sequence[float] | float, b: Grads, wb: float) -> list[Tensor]:
    """``wa * a + wb * b``; ``wa`` may be one weight per tensor. Same dtypes as ``a``.

    fp32/fp64 tensors use foreach kernels. Lower precision (bf16) is computed in fp32 one tensor at
    a time and rounded once, so the update is the fp32 result cast: PCGrad's projection, exact in
    fp32, then loses only the final rounding (two bf16 roundings could lose more).
    """
    weights = [float(wa)] * len(a) if isinstance(wa, (int, float)) else [float(w) for w in wa]
    if all(acc_dtype(t) == t.dtype for t in a):
        out = list(torch._foreach_mul(list(a), weights))
        torch._foreach_add_(out, list(b), alpha=float(wb))
        return out
    return [axpby(x, w, (y, wb)) for x, y, w in zip(a, b, weights, strict=True)]


def axpby(a: Tensor, wa: float | Tensor, *terms: tuple[Tensor, float | Tensor], out: Tensor | None = None) -> Tensor:
    """``wa * a + Σ w * b`` over ``terms = ((b, w), ...)`` for one tensor, in at least fp32 and
    rounded once to ``a``'s dtype.

    The weights may be 0-dim tensors (PCGrad's coefficient), so that a rule applied inside a
    backward hook never waits for the device to hand a scalar back to Python. ``out``: None, or
    ``a`` itself, to write the result into ``a`` (the same kernels in place, so the same bits)
    instead of allocating it.
    """
    if out is not None and out is not a:
        raise ValueError("axpby writes in place only into its first operand (out=a)")
    inplace = out is not None
    if acc_dtype(a) != a.dtype:
        acc = a.to(acc_dtype(a)).mul_(wa)  # the one full-size temporary
    elif isinstance(wa, Tensor) or wa != 1.0:
        acc = a.mul_(wa) if inplace else torch.mul(a, wa)  # a copy and a multiply in one pass
    elif terms:  # ``1 * a`` is ``a``: the first term is added in the pass that allocates the result
        (b, w), terms = terms[0], terms[1:]
        if isinstance(w, Tensor):
            acc = a.addcmul_(b, w) if inplace else torch.addcmul(a, b, w)
        else:
            acc = a.add_(b, alpha=float(w)) if inplace else torch.add(a, b, alpha=float(w))
    else:
        acc = a if inplace else a.clone()
    for b, w in terms:
        if isinstance(w, Tensor):
            acc.addcmul_(b, w)  # in acc's dtype: ``b * w`` would round to b's (bf16) first
        else:
            acc.add_(b, alpha=float(w))
    if acc.dtype == a.dtype:
        return acc
    return a.copy_(acc) if inplace else acc.to(a.dtype)


Stats = dict[str, Tensor]


@dataclass(frozen=True)
class Combiner(ABC):
    """Base of the combiners: weights, parameter-subset selection and the call convention.

    ``select`` is an optional regex over parameter names: the combiner's rule is applied only to
    the matching tensors and the plain weighted sum to the others (the names are passed by the
    training module; a call without names treats every tensor as selected).
    ``reference`` (optional, same shapes as ``g_r``) replaces ``g_r`` as the direction that the
    conflict test and the projection use, e.g. an exponential moving average of ``g_r``.
    A combiner whose rule has no faithful reading with such a reference sets ``uses_reference``
    to False and refuses one, rather than ignoring it.

    A rule is written one of two ways. **Per tensor** (the built-in combiners): ``_sums`` gives
    the 0-dim sums over one tensor's coordinates that its rule needs (PCGrad: ``<g_f, s>`` and
    ``‖s‖²``), ``_tensor`` maps the tensor's ``(r, f, s)`` and those sums to its update and a few
    0-dim statistics that are themselves sums over coordinates (counts), ``_finish`` reduces the
    statistics over the tensors (each part holds the tensor's sums too), and a rule that needs
    scalars over *all* tensors first (a global dot product) sets ``needs_totals`` and computes
    them from every tensor's sums in ``_totals``. The training step can then apply a rule without
    ``needs_totals`` inside the forget backward pass, as each tensor's gradient is produced
    (:class:`~unlearn.training.gradients.TensorwiseUpdate`), so no buffer beyond ``.grad`` is
    held; and on sharded gradients (FSDP) it sums every tensor's sums over the shards in one
    collective before any update, and the statistics in one after, so the rule is the same as on
    the whole tensors. **Whole lists**: ``_combine`` maps the lists at once (the simple extension
    point); the step then keeps ``g_r`` and ``g_f`` in buffers and calls it (not on shards).

    A per-tensor rule that sets ``writes_out`` takes ``out`` in ``_tensor``: None, or ``r`` itself
    when the step no longer needs ``g_r``'s tensor (no diagnostics on this step), and the update
    may then be written into it. That saves allocating an update per tensor (the same arithmetic:
    the same kernels in place), which on a CPU costs more than the rule's own arithmetic.

    The rule is abstract: a subclass that writes neither ``_tensor`` nor ``_combine`` is an
    abstract class, and building it (``combiner=...`` included) raises ``TypeError``.
    """

    uses_reference: ClassVar[bool] = True
    needs_totals: ClassVar[bool] = False
    writes_out: ClassVar[bool] = False

    alpha: float = 1.0
    gamma: float = 1.0
    select: str | None = None

    def __post_init__(self) -> None:
        check_weight("alpha", self.alpha)
        check_weight("gamma", self.gamma)
        if self.select is not None:
            try:
                re.compile(self.select)
            except re.error as e:
                raise ValueError(f"combiner.select must be a valid regex, got {self.select!r}: {e}") from e

    def __init_subclass__(cls, **kwargs: object) -> None:
        # Both forms of the rule are abstract, and a combiner writes one of them: writing one makes
        # the other concrete (a stub that is never called), so only a subclass with neither stays
        # abstract and cannot be instantiated.
        super().__init_subclass__(**kwargs)
        if _written(cls, "_tensor") and not _written(cls, "_combine"):
            cls._combine = _no_combine  # type: ignore[method-assign]
        elif _written(cls, "_combine") and not _written(cls, "_tensor"):
            cls._tensor = _no_tensor  # type: ignore[method-assign]

    @property
    def per_tensor(self) -> bool:
        """Whether the rule is given per tensor (``_tensor``) rather than on whole lists."""
        return type(self)._tensor is not _no_tensor

    @property
    def streams(self) -> bool:
        """Whether the rule can be applied to each tensor as soon as its gradients exist."""
        return self.per_tensor and not self.needs_totals

    def __call__(self, g_retain: Grads, g_forget: Grads) -> list[Tensor]:
        return self.combine(g_retain, g_forget).update

    def combine(
        self,
        g_retain: Grads,
        g_forget: Grads,
        *,
        names: Sequence[str] | None = None,
        reference: Grads | None = None,
    ) -> Combination:
        check_pair(g_retain, g_forget)
        ref = g_retain if reference is None else reference
        if reference is not None:
            self.check_reference()
            check_pair(g_retain, reference)
        if names is not None and len(names) != len(g_retain):
            raise ValueError(f"got {len(names)} parameter names for {len(g_retain)} gradient tensors")
        if self.per_tensor:
            run = self.start(names, len(g_retain))
            if self.needs_totals:
                run.prepare(g_retain, g_forget, ref)
            update = [run.tensor(i, r, f, s) for i, (r, f, s) in enumerate(zip(g_retain, g_forget, ref, strict=True))]
            return Combination(update, run.stats())
        if self.select is None or names is None:
            return self._combine(list(g_retain), list(g_forget), list(ref))
        chosen = [i for i, m in enumerate(self.selection(names, len(names))) if m]
        chosen_set = set(chosen)
        rest = [i for i in range(len(names)) if i not in chosen_set]
        out: list[Tensor] = [g_retain[0]] * len(names)  # every slot is overwritten below
        inner = self._combine([g_retain[i] for i in chosen], [g_forget[i] for i in chosen], [ref[i] for i in chosen])
        for i, u in zip(chosen, inner.update, strict=True):
            out[i] = u
        plain = weighted_sum([g_retain[i] for i in rest], self.alpha, [g_forget[i] for i in rest], self.gamma)
        for i, u in zip(rest, plain, strict=True):
            out[i] = u
        stats = dict(inner.stats)
        stats["selected_frac"] = torch.tensor(len(chosen) / max(len(names), 1))
        return Combination(out, stats)

    def check_reference(self) -> None:
        if not self.uses_reference:
            raise ValueError(
                f"{type(self).__name__} takes no reference gradient: set train.retain_ema=null with this combiner"
            )

    def selection(self, names: Sequence[str] | None, n: int) -> list[bool]:
        """Which of ``n`` tensors the rule applies to (all of them without ``select`` or names)."""
        if self.select is None or names is None:
            return [True] * n
        pattern = re.compile(self.select)
        return [bool(pattern.search(name)) for name in names]

    def start(self, names: Sequence[str] | None, n: int) -> "TensorCombine":
        """A per-tensor combination of ``n`` tensors, fed one tensor at a time (any order)."""
        if not self.per_tensor:
            raise TypeError(f"{type(self).__name__} implements _combine on whole lists, not a per-tensor rule")
        return TensorCombine(
            self, self.selection(names, n), report_selected=self.select is not None and names is not None
        )

    @property
    def needs_sums(self) -> bool:
        """Whether the rule reads per-tensor sums (``_sums``), which shards must add up first."""
        return type(self)._sums is not Combiner._sums

    # -- the rule: per tensor, or on whole lists ------------------------------------------------
    def _sums(self, r: Tensor, f: Tensor, s: Tensor) -> Stats:
        """0-dim sums over this tensor's coordinates that ``_tensor`` (and ``_totals``) read:
        on a shard they are the shard's share, and the step adds the shards' before the rule."""
        return {}

    def _totals(self, sums: list[Stats]) -> Stats:
        """Scalars over every selected tensor that ``_tensor`` needs (``needs_totals`` rules),
        from each selected tensor's ``_sums`` (in parameter order)."""
        return {}

    @abstractmethod
    def _tensor(self, r: Tensor, f: Tensor, s: Tensor, totals: Stats) -> tuple[Tensor, Stats]:
        """One tensor's update from its ``g_r``, ``g_f`` and reference, and its 0-dim statistics
        (sums over its coordinates, so that shards' statistics add up). ``totals`` holds this
        tensor's ``_sums`` and the ``_totals``."""

    def _finish(self, parts: list[Stats], totals: Stats) -> Stats:
        """The logged statistics from the per-tensor ones (in parameter order; each part holds the
        tensor's ``_sums`` and its ``_tensor`` statistics)."""
        return {}

    @abstractmethod
    def _combine(self, g_r: list[Tensor], g_f: list[Tensor], ref: list[Tensor]) -> Combination:
        """The update of whole lists (the selected tensors, in parameter order) and its statistics."""


def _written(cls: type, name: str) -> bool:
    """Whether ``cls`` has a concrete ``name`` (its own or inherited), not the abstract one."""
    return not getattr(getattr(cls, name), "__isabstractmethod__", False)


def _no_tensor(self: Combiner, r: Tensor, f: Tensor, s: Tensor, totals: Stats) -> tuple[Tensor, Stats]:
    raise TypeError(f"{type(self).__name__} implements _combine on whole lists, not a per-tensor rule")


def _no_combine(self: Combiner, g_r: list[Tensor], g_f: list[Tensor], ref: list[Tensor]) -> Combination:
    raise TypeError(f"{type(self).__name__} implements its rule per tensor (_tensor), not _combine")


class TensorCombine:
    """One step's per-tensor combination: the update of tensor ``i`` as its gradients arrive.

    A throwaway accumulator of the per-tensor statistics (the combiner itself stays stateless).
    Unselected tensors (``select``) get the plain weighted sum and no statistics.

    :meth:`prepare` computes every selected tensor's sums first (and the totals from them):
    ``needs_totals`` rules need it, and so does a sharded step, whose ``reduce`` adds the sums
    over the shards in one collective. Without it, :meth:`tensor` takes each tensor's sums from
    the tensor itself, so the rule can run inside a backward hook.
    """

    def __init__(self, combiner: Combiner, selected: list[bool], report_selected: bool) -> None:
        self.combiner, self.selected, self.report_selected = combiner, selected, report_selected
        self.totals: Stats = {}
        self.sums: dict[int, Stats] = {}
        self.parts: dict[int, Stats] = {}

    def prepare(
        self, g_r: Grads, g_f: Grads, ref: Grads, reduce: "Callable[[list[Stats]], list[Stats]] | None" = None
    ) -> None:
        """Every selected tensor's sums (``reduce``: summed over the ranks' shards), then the totals."""
        c = self.combiner
        pick = [i for i, m in enumerate(self.selected) if m]
        sums = [c._sums(g_r[i], g_f[i], ref[i]) for i in pick]
        if reduce is not None and c.needs_sums:
            sums = reduce(sums)
        self.sums = dict(zip(pick, sums, strict=True))
        if c.needs_totals:
            self.totals = c._totals(sums)

    def tensor(self, i: int, r: Tensor, f: Tensor, s: Tensor, out: Tensor | None = None) -> Tensor:
        """Tensor ``i``'s update; ``out``: None, or ``r`` when the caller gives up ``r``'s storage
        (the update may be written into it, if the rule ``writes_out``)."""
        c = self.combiner
        if not self.selected[i]:
            return axpby(r, c.alpha, (f, c.gamma), out=out)
        sums = self.sums[i] if i in self.sums else self.sums.setdefault(i, c._sums(r, f, s))
        if out is not None and c.writes_out:
            update, own = c._tensor(r, f, s, {**sums, **self.totals}, out=out)  # type: ignore[call-arg]
        else:
            update, own = c._tensor(r, f, s, {**sums, **self.totals})
        self.parts[i] = {**sums, **own}
        return update

    def part_stats(self) -> list[Stats]:
        """Each tensor's ``_tensor`` statistics (the ones a sharded step sums over the ranks)."""
        return [{k: v for k, v in self.parts[i].items() if k not in self.sums.get(i, {})} for i in sorted(self.parts)]

    def stats(self, reduced: list[Stats] | None = None) -> Stats:
        """The logged statistics; ``reduced``: :meth:`part_stats` summed over the ranks."""
        order = sorted(self.parts)
        parts = [self.parts[i] for i in order]
        if reduced is not None:
            parts = [{**self.sums.get(i, {}), **r} for i, r in zip(order, reduced, strict=True)]
        stats = dict(self.combiner._finish(parts, self.totals))
        if self.report_selected:
            stats["selected_frac"] = torch.tensor(sum(self.selected) / max(len(self.selected), 1))
        return stats
