"""``python -m unlearn.bench.combiners``: what a combiner costs on top of the plain sum.

For each model (``conf/model/<name>.yaml``) and each combiner (``conf/combiner/<name>.yaml``) it
trains on the same synthetic token batches (forget and retain batches of ``batch × seq`` tokens,
every token labelled) with the real :class:`~unlearn.training.module.UnlearnModule` under a
Lightning Trainer, and reports:

- **step**: wall time of one full optimizer step (both backward passes, combine, diagnostics,
  ``.grad``, clip, AdamW, logging), median over ``--repeats`` steps after ``--warmup`` steps, and
  its ratio to the ``sum`` step (target ≤ 1.10);
- **peak**: peak tensor memory during one more step, above the level at the step's start (see
  :mod:`unlearn.bench.memory`), and how much it exceeds the ``sum`` step's peak, in gradient
  buffers (one buffer = every trainable parameter's size; target ≤ 1);
- **combine**: on the model's real gradients, the combiner plus the diagnostics alone, for the
  per-tensor foreach code and for the flattening alternative (:mod:`unlearn.bench.flatten`), and
  the transient memory of the combine phase beyond the update itself, in gradient buffers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import lightning as L
import torch
from torch import Tensor

from unlearn.bench.flatten import FLAT, flat_diagnostics
from unlearn.bench.memory import PeakMemory
from unlearn.combiners import Combiner, gradient_diagnostics
from unlearn.data.paired import PairedCollate, PairedStream
from unlearn.losses import GA, NLL, Objective
from unlearn.training.fit import LoopConfig, fit
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.training.optim import OptimConfig

COMBINERS = ("sum", "pcgrad", "pcgrad_global", "pcgrad_symmetric", "sago", "sago_prefer_retain")
MiB = 2**20


def compose(model: str, combiner: str) -> Any:
    """The composed project config for ``model=<model> combiner=<combiner>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from unlearn.__main__ import conf_dir

    with initialize_config_dir(conf_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=[f"model={model}", f"combiner={combiner}", "logger=none"])


def build_combiner(name: str) -> Combiner:
    from unlearn.config import build

    return build(compose("tiny", name), "combiner")


def build_model(name: str, device: torch.device) -> tuple[torch.nn.Module, int]:
    from unlearn.config import build

    model, tok = build(compose(name, "sum"), "model.spec").load(torch.float32)
    return model.to(device), len(tok)


def synthetic_stream(vocab: int, batch: int, seq: int, steps: int, seed: int = 0) -> PairedStream:
    """Forget and retain rows of exactly ``seq`` random tokens, all labelled (no padding)."""
    g = torch.Generator().manual_seed(seed)

    def rows(n: int, tag: str) -> list[dict[str, Any]]:
        ids = torch.randint(0, vocab, (n, seq), generator=g).tolist()
        return [{"input_ids": r, "labels": r, "id": f"{tag}{i}"} for i, r in enumerate(ids)]

    return PairedStream(rows(4 * batch, "f"), rows(4 * batch, "r"), steps * batch, seed=seed)


class StepClock(L.Callback):
    """Times every training step; measures the peak memory of step ``memory_step`` (not timed)."""

    def __init__(self, device: torch.device, memory_step: int) -> None:
        self.device, self.memory_step = device, memory_step
        self.times: list[float] = []
        self.peak = 0
        self._mem: PeakMemory | None = None
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int) -> None:
        if idx == self.memory_step:
            self._mem = PeakMemory(self.device).__enter__()
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int) -> None:
        self._sync()
        if self._mem is not None:
            self._mem.__exit__(None, None, None)
            self.peak, self._mem = self._mem.peak, None
        else:
            self.times.append(time.perf_counter() - self._t0)


@dataclass
class StepResult:
    times: list[float]
    peak: int


def time_steps(model: torch.nn.Module, combiner: Combiner, stream: PairedStream, batch: int, warmup: int, repeats: int, device: torch.device) -> StepResult:
    steps = warmup + repeats + 1
    clock = StepClock(device, memory_step=steps - 1)
    module = UnlearnModule(model, Objective(forget=GA(), retain=NLL()), combiner, OptimConfig(lr=1e-5, schedule="constant"), StepConfig())
    loop = LoopConfig(accelerator=device.type, enable_progress_bar=False)
    fit(module, stream, pad_id=0, batch_size=batch, steps=steps, loop=loop, callbacks=[clock])
    return StepResult(clock.times[warmup:], clock.peak)


def task_gradients(model: torch.nn.Module, stream: PairedStream, batch: int) -> tuple[list[Tensor], list[Tensor], list[str]]:
    """Real ``g_r`` and ``g_f`` of the model on the first batch."""
    data = PairedCollate(0)([stream[k] for k in range(batch)])
    data = {k: {n: (v.to(next(model.parameters()).device) if isinstance(v, Tensor) else v) for n, v in b.items()} for k, b in data.items()}
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    obj = Objective(forget=GA(), retain=NLL())
    g_r = list(torch.autograd.grad(obj.loss("retain", model, data), params))
    g_f = list(torch.autograd.grad(obj.loss("forget", model, data), params))
    return g_r, g_f, [n for n, _ in named]


def median_time(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:  # the first call is a warm-up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


@dataclass
class CombineResult:
    combine: float
    diagnostics: float
    flat: float | None
    transient: int


def combine_costs(name: str, combiner: Combiner, grads: tuple[list[Tensor], list[Tensor], list[str]], repeats: int, device: torch.device) -> CombineResult:
    """Combine and diagnostics alone on real gradients, against the flattening alternative."""
    g_r, g_f, names = grads
    update = combiner.combine(g_r, g_f, names=names).update

    def ours() -> Any:
        res = combiner.combine(g_r, g_f, names=names)
        return res.update, gradient_diagnostics(g_r, g_f, res.update)

    def flattened() -> Any:
        u = FLAT[name](g_r, g_f, combiner.alpha, combiner.gamma)
        return u, flat_diagnostics(g_r, g_f, u)

    with PeakMemory(device) as mem:
        kept = ours()
    transient = mem.peak - sum(u.numel() * u.element_size() for u in kept[0])
    del kept
    return CombineResult(
        combine=median_time(lambda: combiner.combine(g_r, g_f, names=names), repeats, device),
        diagnostics=median_time(lambda: gradient_diagnostics(g_r, g_f, update), repeats, device),
        flat=median_time(flattened, repeats, device) if name in FLAT else None,
        transient=transient,
    )


def run(models: Sequence[str], combiners: Sequence[str], batch: int, seq: int, warmup: int, repeats: int, rounds: int, device: torch.device) -> None:
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch {batch}×{seq} tokens per task; "
          f"step: median of {rounds}×{repeats} steps, each run after {warmup} warm-up steps, combiners interleaved\n")
    step_rows, combine_rows = [], []
    for m in models:
        model, vocab = build_model(m, device)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        buffer = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        stream = synthetic_stream(vocab, batch, seq, warmup + repeats + 1)
        built = {c: build_combiner(c) for c in combiners}
        times: dict[str, list[float]] = {c: [] for c in combiners}
        peaks: dict[str, int] = {}
        for _ in range(rounds):  # interleaved, so that a change in machine load hits every combiner
            for c in combiners:
                model.load_state_dict(start)
                step = time_steps(model, built[c], stream, batch, warmup, repeats, device)
                times[c] += step.times
                peaks.setdefault(c, step.peak)
        grads = task_gradients(model, stream, batch)
        base_t, base_p = statistics.median(times["sum"]), peaks["sum"]
        for c in combiners:
            t = statistics.median(times[c])
            step_rows.append([m, f"{n_params / 1e6:.1f}M", c, f"{t * 1e3:.0f}", f"{t / base_t:.3f}", f"{peaks[c] / MiB:.0f}", f"{(peaks[c] - base_p) / buffer:+.2f}"])
            cost = combine_costs(c, built[c], grads, max(2 * repeats, 10), device)
            ours = cost.combine + cost.diagnostics
            flat = [f"{cost.flat * 1e3:.1f}", f"{cost.flat / ours:.1f}×"] if cost.flat else ["—", "—"]
            combine_rows.append([m, c, f"{cost.combine * 1e3:.1f}", f"{cost.diagnostics * 1e3:.1f}", *flat, f"{cost.transient / buffer:.2f}"])
        del model, grads
    table(["model", "params", "combiner", "step ms", "× sum", "peak MiB", "peak − sum (grad buffers)"], step_rows)
    print()
    table(["model", "combiner", "combine ms", "diagnostics ms", "flatten ms (both)", "foreach speed-up", "combine transient (grad buffers)"], combine_rows)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m unlearn.bench.combiners", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["tiny", "tiny_10m"], help="conf/model options (default: tiny tiny_10m)")
    p.add_argument("--combiners", nargs="+", default=list(COMBINERS), choices=COMBINERS)
    p.add_argument("--batch", type=int, default=8, help="sequences per task per step (default 8)")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps; the median is reported (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="runs per combiner, interleaved (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice); 1 is steadier on a shared machine")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    a = p.parse_args(argv)
    if "sum" not in a.combiners:
        a.combiners = ["sum", *a.combiners]
    elif a.combiners[0] != "sum":
        a.combiners = ["sum", *[c for c in a.combiners if c != "sum"]]
    device = torch.device("cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device))
    from unlearn.training.fit import quiet_lightning

    quiet_lightning()
    if a.threads:
        torch.set_num_threads(a.threads)
    run(a.models, a.combiners, a.batch, a.seq, a.warmup, a.repeats, a.rounds, device)


if __name__ == "__main__":
    main()
