"""Peak tensor memory of a block of code, on CPU as well as on CUDA.

On CUDA the caching allocator keeps the statistic (``torch.cuda.max_memory_allocated``). On CPU
nothing does, so :class:`PeakMemory` runs the PyTorch profiler with ``profile_memory=True``: the
CPU allocator then reports every allocation and free of tensor storage (activations, autograd
temporaries, optimizer state, anything a kernel allocates) as a ``[memory]`` event with a signed
byte count. The running sum of those events, in time order, is the tensor memory allocated since
the block started; its maximum is the peak above the level at entry.

Frees of blocks allocated before the block started are not reported by the profiler (it does not
know their size), so a block that frees older tensors and then allocates new ones reads a little
high. Measured blocks here start from the same state for every variant being compared, so
differences between variants are exact.
"""

from __future__ import annotations

import warnings
from types import TracebackType
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def _events_peak(prof: profile) -> int:
    results: Any = prof.profiler.kineto_results if prof.profiler is not None else None  # torch's private event list
    raw = [e for e in (results.events() if results is not None else []) if e.name() == "[memory]"]
    raw.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for e in raw:
        level += int(e.nbytes())
        peak = max(peak, level)
    return peak


class PeakMemory:
    """``with PeakMemory(device) as m: ...`` then ``m.peak`` = peak tensor bytes above the entry level."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak = 0
        self._prof: profile | None = None
        self._start = 0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._prof.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        assert self._prof is not None
        self._prof.__exit__(kind, exc, tb)
        self.peak = _events_peak(self._prof)
