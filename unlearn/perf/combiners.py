"""``python -m unlearn.perf.combiners``: what a combiner costs on top of plain gradient difference.

For each model (``conf/model/<name>.yaml``), each batch shape and each combiner
(``conf/combiner/<name>.yaml``) it trains on synthetic token batches (forget and retain batches of
``batch × seq`` tokens, every token labelled) with the real
:class:`~unlearn.training.module.UnlearnModule` under a Lightning Trainer, beside ``plain``: plain
GD, one ``(L_f + L_r).backward()`` into autograd's own ``.grad`` on the same batches, then the same
clip and AdamW. It reports:

- **step**: wall time of one full optimizer step (backward passes, combine, diagnostics, ``.grad``,
  clip, AdamW, logging), median over ``--repeats`` steps per row, and its ratio to the ``plain``
  step (target ≤ 1.05 for sum, pcgrad and sago). The rows take turns step by step in one training
  run, so that a shared machine's changing load hits them alike;
- **peak**: peak tensor memory during one more step, above the level at the step's start (see
  :mod:`unlearn.perf.memory`), and how much it exceeds the ``plain`` step's peak, in gradient
  buffers (one buffer = every trainable parameter's size; targets with one micro-batch: ≤ +0.10
  for sum, pcgrad and sago, which combine during the forget backward; with ``--accumulate 4``
  ≤ +1.1, as ``g_r`` and ``g_f`` are then accumulated in two buffers). The default shapes are
  8×128, where activations dominate, and 1×16, where gradients do;
- **combine**: on the model's real gradients, the combiner plus the diagnostics alone, for the
  per-tensor foreach code and for the flattening alternative (:mod:`unlearn.perf.flatten`), and
  the transient memory of the combine phase beyond the update itself, in gradient buffers;
- **collectives**: what a ``trainer=ddp`` step issues for the model, one all-reduce per bucket per
  task and one for the logged losses (from the bucket plan the step itself uses;
  ``tests/test_distributed.py`` checks that a step issues exactly that many).

``--dtype bf16 --device cuda`` measures at GPU precision; ``--diagnostics off`` times the steps
that compute no diagnostics (``train.diagnostics=false``, or a step ``trainer.log_every_n_steps``
does not log).
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

from unlearn.combiners import Combiner, Sum, gradient_diagnostics
from unlearn.data.paired import PairedCollate, PairedStream
from unlearn.losses import GA, NLL, Objective
from unlearn.perf.flatten import FLAT, flat_diagnostics
from unlearn.perf.memory import PeakMemory
from unlearn.training.fit import LoopConfig, fit
from unlearn.training.module import StepConfig, UnlearnModule
from unlearn.training.optim import OptimConfig

COMBINERS = ("sum", "pcgrad", "pcgrad_global", "pcgrad_symmetric", "sago", "sago_prefer_retain")
PLAIN = "plain"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
MiB = 2**20


def compose(model: str, combiner: str) -> Any:
    """The composed project config for ``model=<model> combiner=<combiner>``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from unlearn.hydra_setup import conf_dir

    with initialize_config_dir(conf_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=[f"model={model}", f"combiner={combiner}", "logger=none"])


def build_combiner(name: str) -> Combiner:
    from unlearn.config import build

    return build(compose("tiny", name), "combiner")


def build_model(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, int]:
    from unlearn.config import build

    spec = build(compose(name, "sum"), "model.spec")
    if device.type == "cuda":  # a ~1B model is built on the GPU directly (its random init on a CPU takes minutes)
        with torch.device(device):
            model, tok = spec.load(dtype)
    else:
        model, tok = spec.load(dtype)
    return model.to(device), len(tok)


def collectives(model: torch.nn.Module) -> list[str]:
    """A ``trainer=ddp`` step's collectives for this model: one all-reduce per bucket per task
    (:func:`~unlearn.distributed.bucket_plan`, the plan the step uses) and one for the logged
    losses, against the per-tensor all-reduce that bucketing replaced."""
    from unlearn.distributed import BUCKET_BYTES, bucket_plan

    params = [p for p in model.parameters() if p.requires_grad]
    per_task = len(bucket_plan(params))
    return [
        str(len(params)),
        f"{per_task} (≤ {BUCKET_BYTES // 2**20} MiB)",
        str(2 * per_task + 1),
        str(2 * len(params) + 1),
    ]


def synthetic_stream(
    vocab: int, batch: int, seq: int, steps: int, seed: int = 0
) -> PairedStream:  # steps: micro-batches
    """Forget and retain rows of exactly ``seq`` random tokens, all labelled (no padding)."""
    g = torch.Generator().manual_seed(seed)

    def rows(n: int, tag: str) -> list[dict[str, Any]]:
        ids = torch.randint(0, vocab, (n, seq), generator=g).tolist()
        return [{"input_ids": r, "labels": r, "id": f"{tag}{i}"} for i, r in enumerate(ids)]

    return PairedStream(rows(4 * batch, "f"), rows(4 * batch, "r"), steps * batch, seed=seed)


def schedule(rows: Sequence[str], warmup: int, repeats: int) -> list[tuple[str, str]]:
    """``(row, what)`` per optimizer step, ``what`` in warmup | time | memory.

    The rows take turns step by step (forward order, then reverse, so that a drift in machine
    load over a round hits them alike): on a shared machine the load changes over minutes, and
    adjacent steps see the same load where separate runs do not.
    """
    plan = [(rows[i % len(rows)], "warmup") for i in range(warmup * len(rows))]
    for k in range(repeats):
        order = rows if k % 2 == 0 else list(reversed(rows))
        plan += [(c, "time") for c in order]
    return plan + [(c, "memory") for c in rows]


class BenchModule(UnlearnModule):
    """The real module, which takes the ``plain`` GD step instead while ``plain`` is set."""

    plain = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if not self.plain:
            return super().training_step(batch, batch_idx)
        accumulate = self.step_cfg.accumulate
        loss = torch.stack([self.objective.loss(task, self.model, batch) for task in self.objective.tasks]).sum()
        (loss / accumulate).backward()  # L_r + L_f: alpha = gamma = 1, as the sum combiner's defaults
        if (batch_idx + 1) % accumulate != 0:
            return None
        opt: Any = self.optimizers()  # one optimizer, one scheduler (configure_optimizers)
        sched: Any = self.lr_schedulers()
        if self.step_cfg.clip_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=self.step_cfg.clip_norm, gradient_clip_algorithm="norm")
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        self.log("train/loss/plain", loss.detach(), on_step=True, on_epoch=False, batch_size=1)
        return None


class TurnTaking(L.Callback):
    """Sets the module's step before every optimizer step by the plan; times steps, measures memory steps."""

    def __init__(
        self, built: dict[str, Combiner], plan: list[tuple[str, str]], device: torch.device, accumulate: int = 1
    ) -> None:
        self.built, self.plan, self.device, self.accumulate = built, plan, device, accumulate
        self.times: dict[str, list[float]] = {c: [] for c in [PLAIN, *built]}
        self.peaks: dict[str, int] = {}
        self._mem: PeakMemory | None = None
        self._t0 = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, idx: int) -> None:
        if idx % self.accumulate != 0:
            return  # a later micro-batch of the same optimizer step
        name, what = self.plan[idx // self.accumulate]
        module.plain = name == PLAIN
        if name != PLAIN:
            module.combiner = self.built[name]  # a combiner is pure: swapping it between steps is safe
        if what == "memory":
            self._mem = PeakMemory(self.device).__enter__()
        self._sync()
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, out: Any, batch: Any, idx: int) -> None:
        if (idx + 1) % self.accumulate != 0:
            return
        self._sync()
        name, what = self.plan[idx // self.accumulate]
        if what == "time":
            self.times[name].append(time.perf_counter() - self._t0)
        elif self._mem is not None:
            self._mem.__exit__(None, None, None)
            self.peaks[name], self._mem = self._mem.peak, None


def time_steps(
    model: torch.nn.Module,
    built: dict[str, Combiner],
    stream: PairedStream,
    batch: int,
    plan: list[tuple[str, str]],
    device: torch.device,
    step: StepConfig | None = None,
) -> TurnTaking:
    """One training run of ``len(plan)`` optimizer steps whose row changes every step (see :func:`schedule`)."""
    step = step if step is not None else StepConfig()
    clock = TurnTaking(built, plan, device, step.accumulate)
    module = BenchModule(
        model,
        Objective(forget=GA(), retain=NLL()),
        Sum(),
        OptimConfig(lr=1e-5, schedule="constant", warmup_ratio=0.0),
        step,
    )
    loop = LoopConfig(accelerator=device.type, enable_progress_bar=False)
    fit(module, stream, pad_id=0, batch_size=batch, steps=len(plan), loop=loop, callbacks=[clock])
    return clock


def task_gradients(
    model: torch.nn.Module, stream: PairedStream, batch: int
) -> tuple[list[Tensor], list[Tensor], list[str]]:
    """Real ``g_r`` and ``g_f`` of the model on the first batch."""
    data = PairedCollate(0)([stream[k] for k in range(batch)])
    data = {
        k: {n: (v.to(next(model.parameters()).device) if isinstance(v, Tensor) else v) for n, v in b.items()}
        for k, b in data.items()
    }
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


def combine_costs(
    name: str,
    combiner: Combiner,
    grads: tuple[list[Tensor], list[Tensor], list[str]],
    repeats: int,
    device: torch.device,
) -> CombineResult:
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
    fns = {
        "combine": lambda: combiner.combine(g_r, g_f, names=names),
        "diagnostics": lambda: gradient_diagnostics(g_r, g_f, update),
    }
    if name in FLAT:
        fns["flat"] = flattened
    t = median_times(fns, repeats, device)
    return CombineResult(combine=t["combine"], diagnostics=t["diagnostics"], flat=t.get("flat"), transient=transient)


def run(
    models: Sequence[str],
    combiners: Sequence[str],
    shapes: Sequence[tuple[int, int]],
    warmup: int,
    repeats: int,
    device: torch.device,
    accumulate: int = 1,
    dtype: torch.dtype = torch.float32,
    diagnostics: bool = True,
) -> None:
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {dtype}; "
        f"train.accumulate={accumulate}; train.diagnostics={str(diagnostics).lower()}; "
        f"step: median of {repeats} steps per row, rows taking turns step by step after {warmup} warm-up turns\n"
    )
    step_rows, combine_rows, comm_rows = [], [], []
    rows = [PLAIN, *combiners]
    plan = schedule(rows, warmup, repeats)
    for m in models:
        for batch, seq in shapes:
            model, vocab = build_model(m, device, dtype)
            n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
            buffer = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
            stream = synthetic_stream(vocab, batch, seq, len(plan) * accumulate)
            built = {c: build_combiner(c) for c in combiners}
            clock = time_steps(
                model, built, stream, batch, plan, device, StepConfig(accumulate=accumulate, diagnostics=diagnostics)
            )
            times, peaks = clock.times, clock.peaks
            base_t, base_p = statistics.median(times[PLAIN]), peaks[PLAIN]
            for c in rows:
                t = statistics.median(times[c])
                step_rows.append(
                    [
                        m,
                        f"{n_params / 1e6:.1f}M",
                        f"{batch}×{seq}",
                        c,
                        f"{t * 1e3:.0f}",
                        f"{t / base_t:.3f}",
                        f"{peaks[c] / MiB:.0f}",
                        f"{(peaks[c] - base_p) / buffer:+.2f}",
                    ]
                )
            if (batch, seq) == tuple(shapes[0]):  # the combine alone does not depend on the batch shape
                comm_rows.append([m, *collectives(model)])
                grads = task_gradients(model, stream, batch)
                for c in combiners:
                    cost = combine_costs(c, built[c], grads, max(2 * repeats, 10), device)
                    ours = cost.combine + cost.diagnostics
                    flat = [f"{cost.flat * 1e3:.1f}", f"{cost.flat / ours:.1f}×"] if cost.flat else ["—", "—"]
                    combine_rows.append(
                        [
                            m,
                            c,
                            f"{cost.combine * 1e3:.1f}",
                            f"{cost.diagnostics * 1e3:.1f}",
                            *flat,
                            f"{cost.transient / buffer:.2f}",
                        ]
                    )
                del grads
            del model
    table(
        ["model", "params", "batch", "step", "step ms", "× plain", "peak MiB", "peak − plain (grad buffers)"], step_rows
    )
    print()
    table(
        [
            "model",
            "combiner",
            "combine ms",
            "diagnostics ms",
            "flatten ms (both)",
            "foreach speed-up",
            "combine transient (grad buffers)",
        ],
        combine_rows,
    )
    print()
    table(
        [
            "model",
            "tensors",
            "buckets per task",
            "collectives per step (trainer=ddp)",
            "per-tensor all-reduce would issue",
        ],
        comm_rows,
    )


def shape(text: str) -> tuple[int, int]:
    try:
        batch, seq = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is BATCHxSEQ, e.g. 8x128, got {text!r}") from None
    if batch < 1 or seq < 2:
        raise argparse.ArgumentTypeError(f"a shape needs batch >= 1 and seq >= 2, got {text!r}")
    return batch, seq


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m unlearn.perf.combiners", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--models", nargs="+", default=["tiny", "tiny_10m"], help="conf/model options (default: tiny tiny_10m)"
    )
    p.add_argument("--combiners", nargs="+", default=list(COMBINERS), choices=COMBINERS)
    p.add_argument(
        "--shapes",
        nargs="+",
        type=shape,
        default=[(8, 128), (1, 16)],
        help="BATCHxSEQ per task per micro-batch (default: 8x128, activation-dominated, and 1x16, gradient-dominated)",
    )
    p.add_argument("--batch", type=int, default=None, help="with --seq: one shape instead of --shapes")
    p.add_argument("--seq", type=int, default=None, help="with --batch: one shape instead of --shapes")
    p.add_argument(
        "--accumulate", type=int, default=1, help="train.accumulate: micro-batches per optimizer step (default 1)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per combiner first (default 1)")
    p.add_argument(
        "--repeats", type=int, default=8, help="timed steps per combiner; the median is reported (default 8)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice); 1 is steadier on a shared machine",
    )
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    p.add_argument(
        "--dtype", default="fp32", choices=sorted(DTYPES), help="the model's dtype (default fp32; bf16 on a GPU)"
    )
    p.add_argument(
        "--diagnostics",
        default="on",
        choices=["on", "off"],
        help="train.diagnostics in the timed steps "
        "(default on: every step is a logged one; off: a step that is not logged)",
    )
    p.add_argument(
        "--malloc",
        default="kept",
        choices=["kept", "system"],
        help="kept (default): glibc keeps freed memory, as `python -m unlearn` sets it (unlearn.utils.malloc); "
        "system: glibc's defaults",
    )
    a = p.parse_args(argv)
    if (a.batch is None) != (a.seq is None):
        p.error("--batch and --seq go together (or use --shapes)")
    shapes = [(a.batch, a.seq)] if a.batch is not None else a.shapes
    if a.accumulate < 1:
        p.error(f"--accumulate must be >= 1, got {a.accumulate}")
    device = torch.device(
        "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    )
    from unlearn.training.fit import quiet_lightning
    from unlearn.utils.malloc import keep_freed_memory

    quiet_lightning()
    tuned = keep_freed_memory() if a.malloc == "kept" else False
    print(f"malloc: {'freed memory kept (unlearn.utils.malloc)' if tuned else 'system defaults'}")
    if a.threads:
        torch.set_num_threads(a.threads)
    run(
        a.models,
        list(dict.fromkeys(a.combiners)),
        shapes,
        a.warmup,
        a.repeats,
        device,
        a.accumulate,
        DTYPES[a.dtype],
        a.diagnostics == "on",
    )


if __name__ == "__main__":
    main()
