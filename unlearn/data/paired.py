"""The training stream: forget samples, each with a retain partner and (with SGA) its normal group.

Index ``k`` runs over the whole training run (``steps × accumulate × batch × world`` items):
virtual epoch ``k // n`` visits the ``n`` forget samples in a seeded permutation, and the retain
partner of item ``k`` is drawn from a generator seeded by ``(seed, k)``. Everything is a pure
function of ``k``, so runs are reproducible, resumable and split cleanly across DDP ranks. A resumed
run keeps the whole stream (its length counts the steps done before the checkpoint, as Lightning's
restored epoch position does) and reads it from the first item after its checkpoint (``start``, see
:func:`unlearn.training.fit.fit`), so it sees exactly the items an uninterrupted run would.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from torch.utils.data import Dataset

from unlearn.data.collate import collate

Encoded = dict[str, Any]


class PairedStream(Dataset):
    """Items ``{"forget": enc, "retain": enc, "normal": [enc, ...]}`` (absent tasks omitted).

    With no forget rows (fine-tuning) the stream walks the retain rows in seeded epochs instead.
    ``normal_groups[i]`` lists the indices into ``normal_pool`` that accompany forget row ``i``.
    """

    def __init__(
        self,
        forget: Sequence[Encoded] | None,
        retain: Sequence[Encoded] | None,
        length: int,
        seed: int = 0,
        normal_pool: Sequence[Encoded] | None = None,
        normal_groups: Sequence[Sequence[int]] | None = None,
        retain_per_item: int = 1,
        start: int = 0,
    ) -> None:
        if not forget and not retain:
            raise ValueError("the training stream needs forget or retain rows; both are empty")
        if normal_groups is not None and (normal_pool is None or forget is None or len(normal_groups) != len(forget)):
            raise ValueError("normal_groups needs a normal_pool and one group per forget row")
        self.forget = list(forget) if forget else None
        self.retain = list(retain) if retain else None
        self.length = int(length)
        self.seed = int(seed)
        self.normal_pool = normal_pool
        self.normal_groups = normal_groups
        self.retain_per_item = retain_per_item
        if not 0 <= start <= self.length:
            raise ValueError(f"stream start {start} outside [0, {self.length}]")
        self.start = int(start)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def _perm(self, n: int, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s order of the ``n`` rows. The last few are kept on the stream itself: an
        ``lru_cache`` on the method would be shared by every stream and keep them alive as keys."""
        key = (n, epoch)
        if key not in self._perms:
            if len(self._perms) >= 4:
                del self._perms[next(iter(self._perms))]  # the oldest: the stream is read in order
            self._perms[key] = np.random.default_rng((self.seed, epoch)).permutation(n)
        return self._perms[key]

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.item(k)

    def item(self, k: int) -> dict[str, Any]:
        """Item ``k`` of the whole run."""
        if self.forget is None:
            assert self.retain is not None
            n = len(self.retain)
            return {"retain": [self.retain[int(self._perm(n, k // n)[k % n])]]}
        n = len(self.forget)
        i = int(self._perm(n, k // n)[k % n])
        item: dict[str, Any] = {"forget": self.forget[i]}
        if self.retain is not None:
            rng = np.random.default_rng((self.seed, 1, k))
            item["retain"] = [self.retain[int(j)] for j in rng.integers(len(self.retain), size=self.retain_per_item)]
        if self.normal_groups is not None:
            assert self.normal_pool is not None
            item["normal"] = [self.normal_pool[j] for j in self.normal_groups[i]]
        return item


class PairedCollate:
    """Collates stream items into ``{"forget": batch, "retain": batch, "normal": batch}``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "forget" in items[0]:
            out["forget"] = collate([it["forget"] for it in items], self.pad_id)
        for key in ("retain", "normal"):
            if key in items[0]:
                out[key] = collate([e for it in items for e in it[key]], self.pad_id)
        return out
