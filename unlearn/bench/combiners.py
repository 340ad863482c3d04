"""``python -m unlearn.bench.combiners``: what a combiner costs on top of the plain sum.

For each model (``conf/model/<name>.yaml``) and each combiner (``conf/combiner/<name>.yaml``) it
trains on synthetic token batches of one shape (forget and retain batches of ``batch × seq`` tokens,
every token labelled) with the real :class:`~unlearn.training.module.UnlearnModule` under a
Lightning Trainer, and reports:

- **step**: wall time of one full optimizer step (both backward passes, combine, diagnostics,
  ``.grad``, clip, AdamW, logging), median over ``--repeats`` steps per combiner, and its ratio to
  the ``sum`` step (target ≤ 1.10). The combiners take turns step by step in one training run, so
  that a shared machine's changing load hits them alike;
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


def schedule(combiners: Sequence[str], warmup: int, repeats: int) -> list[tuple[str, str]]:
    """``(combiner, what)`` per training step, ``what`` in warmup | time | memory.

    The combiners take turns step by step (forward order, then reverse, so that a drift in machine
    load over a round hits them alike): on a shared machine the load changes over minutes, and
    adjacent steps see the same load where separate runs do not.
    """
    plan = [(combiners[i % len(combiners)], "warmup") for i in range(warmup * len(combiners))]
    for k in range(repeats):
        order = combiners if k % 2 == 0 else list(reversed(combiners))
        plan += [(c, "time") for c in order]
    return plan + [(c, "memory") for c in combiners]


class TurnTaking(L.Callback):
    """Sets the module's combiner before every step by the plan; times steps, measures memory steps."""

    def __init__(self, built: dict[str, Combiner], plan: list[tuple[str, str]], device: torch.device) -> None:
        self.built, self.plan, self.device = built, plan, device
        self.times: dict[str, list[float]] = {c: [] for c in built}
        self.peaks: dict[str, int] = {}
        self._mem: PeakMemory | None = None
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, idx: int) -> None:
        name, what = self.plan[idx]
        module.combiner = self.built[name]  # a combiner is pure: swapping it between steps is safe
        if what == "memory":
            self._mem = PeakMemory(self.device).__enter__()
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int) -> None:
        self._sync()
        name, what = self.plan[idx]
        if what == "time":
            self.times[name].append(time.perf_counter() - self._t0)
        elif self._mem is not None:
            self._mem.__exit__(None, None, None)
            self.peaks[name], self._mem = self._mem.peak, None


def time_steps(model: torch.nn.Module, built: dict[str, Combiner], stream: PairedStream, batch: int, plan: list[tuple[str, str]], device: torch.device) -> TurnTaking:
    """One training run of ``len(plan)`` steps whose combiner changes every step (see :func:`schedule`)."""
    clock = TurnTaking(built, plan, device)
    module = UnlearnModule(model, Objective(forget=GA(), retain=NLL()), built["sum"], OptimConfig(lr=1e-5, schedule="constant"), StepConfig())
    loop = LoopConfig(accelerator=device.type, enable_progress_bar=False)
    fit(module, stream, pad_id=0, batch_size=batch, steps=len(plan), loop=loop, callbacks=[clock])
    return clock


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


def median_times(fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median wall time of each function; they take turns call by call (the first turn warms up)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats + 1):
        for k, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i:
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


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
    fns = {"combine": lambda: combiner.combine(g_r, g_f, names=names), "diagnostics": lambda: gradient_diagnostics(g_r, g_f, update)}
    if name in FLAT:
        fns["flat"] = flattened
    t = median_times(fns, repeats, device)
    return CombineResult(combine=t["combine"], diagnostics=t["diagnostics"], flat=t.get("flat"), transient=transient)


def run(models: Sequence[str], combiners: Sequence[str], batch: int, seq: int, warmup: int, repeats: int, device: torch.device) -> None:
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; batch {batch}×{seq} tokens per task; "
          f"step: median of {repeats} steps per combiner, combiners taking turns step by step after {warmup} warm-up turns\n")
    step_rows, combine_rows = [], []
    plan = schedule(combiners, warmup, repeats)
    for m in models:
        model, vocab = build_model(m, device)
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        buffer = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        stream = synthetic_stream(vocab, batch, seq, len(plan))
        built = {c: build_combiner(c) for c in combiners}
        clock = time_steps(model, built, stream, batch, plan, device)
        times, peaks = clock.times, clock.peaks
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
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per combiner first (default 1)")
    p.add_argument("--repeats", type=int, default=8, help="timed steps per combiner; the median is reported (default 8)")
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
    run(a.models, a.combiners, a.batch, a.seq, a.warmup, a.repeats, device)


if __name__ == "__main__":
    main()
