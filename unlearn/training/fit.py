"""Running the Lightning loop for one training phase (fine-tuning or unlearning)."""

from __future__ import annotations

import logging
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.trainer.states import TrainerStatus
from torch.utils.data import DataLoader, Sampler

from unlearn.data.paired import PairedCollate, PairedStream
from unlearn.training.ddp import InOrderSampler
from unlearn.training.module import UnlearnModule


@dataclass
class LoopConfig:
    """Lightning Trainer settings that a user may change (the rest is fixed by manual optimisation).

    ``strategy`` is a Lightning strategy name, or a mapping with a ``_target_`` (built afresh for
    each Trainer, as a strategy object belongs to one). More than one process needs a data-parallel
    ``_target_`` strategy such as ``unlearn.training.ddp.TaskDDPStrategy`` (``trainer=ddp``): the
    step all-reduces each task's gradient itself, and the training stream is sized by
    :attr:`world_size`.
    """

    accelerator: str = "auto"
    devices: Any = 1
    strategy: Any = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    log_every_n_steps: int = 1
    enable_progress_bar: bool = True
    progress_every: int = 10     # optimizer steps between progress lines when stdout is not a terminal
    threads: int | None = None   # torch threads (torch.set_num_threads); None = torch's choice
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision in ("16-mixed", "16", 16):
            raise ValueError("trainer.precision=16-mixed is not supported (the manual step does no loss scaling); use bf16-mixed or 32-true")
        if isinstance(self.strategy, Mapping) and "_target_" not in self.strategy:
            raise ValueError(f"trainer.strategy must be a Lightning strategy name or have a _target_, got {dict(self.strategy)!r}")
        processes = self._devices() * int(self.extra.get("num_nodes", 1))
        if processes > 1 and not isinstance(self.strategy, Mapping):
            raise ValueError(
                f"trainer.devices={self.devices!r} needs a data-parallel strategy that all-reduces the per-task gradients "
                f"before the combiner: use trainer=ddp (strategy._target_: unlearn.training.ddp.TaskDDPStrategy), got strategy {self.strategy!r}"
            )

    def live_bar(self) -> bool:
        """Lightning's bar only on a terminal: redirected, it would reach the log only at the end."""
        return self.enable_progress_bar and sys.stdout.isatty()

    def _devices(self) -> int:
        if isinstance(self.devices, int) and not isinstance(self.devices, bool) and self.devices >= 1:
            return self.devices
        if isinstance(self.devices, (list, tuple)) and self.devices:
            return len(self.devices)
        raise ValueError(f"trainer.devices must be a positive integer or a list of device indices, got {self.devices!r}")

    @property
    def world_size(self) -> int:
        """Processes that split the training stream (each takes every ``world_size``-th item)."""
        return self._devices() * int(self.extra.get("num_nodes", 1)) if isinstance(self.strategy, Mapping) else 1

    def launched_as(self, launch: Any) -> "LoopConfig":
        """The settings for a job started as ``launch.world`` processes by torchrun or srun: each
        process is one device of the data-parallel strategy (``trainer.devices`` per node)."""
        if not isinstance(self.strategy, Mapping):
            raise ValueError(
                f"trainer.strategy: this job was started as {launch.world} processes (torchrun or srun), which need a data-parallel "
                f"strategy, got {self.strategy!r}: add trainer=ddp or trainer=fsdp (or start one process)"
            )
        return replace(self, devices=launch.local_world, extra={**self.extra, "num_nodes": launch.nodes})

    def single_process(self) -> "LoopConfig":
        """The same settings in one process (for recipes whose result must not depend on the trainer)."""
        return replace(self, devices=1, strategy="auto", extra={k: v for k, v in self.extra.items() if k != "num_nodes"})


def quiet_lightning() -> None:
    """Lightning's start-up banners say nothing a user of this framework can act on."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # checkpoints hold the state after each optimizer step, which is what resuming needs
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    # the stream is a pure function of the item index and a resumed loader starts at the item
    # after the checkpoint (ResumeSampler), which is what Lightning means by a resumable loader
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*LightningModule.*has parameters that were not used.*")


class ResumeSampler(Sampler[int]):
    """Indices ``start, start+1, ..., n-1`` with the length ``n`` of the whole stream.

    Lightning restores a resumed run's position inside its one epoch (the batches done before the
    checkpoint) and ends the epoch when that count reaches ``len(loader)``; a loader of only the
    items left would end it early (after ``n - 2·start`` more batches, not ``n - start``). So the
    loader counts the whole run and yields what is left.
    """

    def __init__(self, n: int, start: int = 0) -> None:
        self.n, self.start = n, start

    def __len__(self) -> int:
        return self.n

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(range(self.start, self.n))


class ProgressLines(L.Callback):
    """One line per ``every`` optimizer steps on stdout, flushed, when stdout is not a terminal
    (a redirected log, a SLURM output file), so progress is visible while the job runs."""

    def __init__(self, every: int, total: int) -> None:
        self.every, self.total, self.last = every, total, -1
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        done = int(getattr(module, "steps_done", trainer.global_step))
        if not trainer.is_global_zero or done == self.last or not (done % self.every == 0 or done == self.total):
            return
        self.last = done
        losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/loss/") and v.numel() == 1}
        shown = " ".join(f"{k.removeprefix('train/')}={v:.4g}" for k, v in sorted(losses.items()))
        print(f"[unlearn] step {done}/{self.total} {shown} ({time.perf_counter() - self.start:.1f}s)".replace("  ", " "), flush=True)


def stream_length(steps: int, accumulate: int, batch_size: int, world: int = 1) -> int:
    return steps * accumulate * batch_size * world


def fit(module: UnlearnModule, stream: PairedStream, pad_id: int, batch_size: int, steps: int, loop: LoopConfig, loggers: Sequence[Any] = (), callbacks: Sequence[Any] = (), default_root_dir: str | None = None, ckpt_path: str | None = None) -> L.Trainer:
    """Train ``module`` for ``steps`` optimizer steps on ``stream``; returns the Trainer.

    With ``ckpt_path`` (a checkpoint of this run) training continues after the checkpoint's step,
    on the stream's items from ``stream.start``. Ctrl-C raises ``KeyboardInterrupt`` (Lightning
    would turn it into ``SystemExit(1)``, indistinguishable from other exits)."""
    quiet_lightning()
    start = int(getattr(stream, "start", 0))
    world = loop.world_size
    sampler = InOrderSampler(stream, world, skip=start // world) if world > 1 else ResumeSampler(len(stream), start)  # type: ignore[arg-type]
    loader = DataLoader(stream, batch_size=batch_size, sampler=sampler, shuffle=False, drop_last=True, collate_fn=PairedCollate(pad_id), num_workers=loop.num_workers)
    strategy = instantiate(loop.strategy) if isinstance(loop.strategy, Mapping) else loop.strategy
    if not sys.stdout.isatty():
        callbacks = [*callbacks, ProgressLines(loop.progress_every, steps)]
    trainer = L.Trainer(
        accelerator=loop.accelerator,
        devices=loop.devices,
        strategy=strategy,
        precision=loop.precision,
        max_steps=steps,
        max_epochs=1,  # the stream holds exactly `steps` optimizer steps of items
        logger=list(loggers) if loggers else False,
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks) and any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
        enable_progress_bar=loop.live_bar(),
        enable_model_summary=False,
        log_every_n_steps=loop.log_every_n_steps,
        num_sanity_val_steps=0,
        default_root_dir=default_root_dir,
        **loop.extra,
    )
    try:
        # weights_only: unpickling the checkpoint cannot call code (see unlearn.resume.checkpoint_step)
        trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    except SystemExit:
        if trainer.state.status == TrainerStatus.INTERRUPTED:
            raise KeyboardInterrupt from None
        raise
    return trainer
