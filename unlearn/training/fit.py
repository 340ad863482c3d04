"""Running the Lightning loop for one training phase (fine-tuning or unlearning)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from typing import Any, Iterator, Mapping, Sequence

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerStatus
from torch.utils.data import DataLoader, Sampler

from unlearn.data.paired import PairedCollate, PairedStream
from unlearn.distributed import alone
from unlearn.schema import LoopConfig
from unlearn.training.ddp import InOrderSampler
from unlearn.training.module import UnlearnModule

__all__ = ["LoopConfig", "ProgressLines", "ResumeSampler", "fit", "quiet_lightning", "stream_length"]


def quiet_lightning() -> None:
    """Lightning's start-up banners say nothing a user of this framework can act on."""
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "lightning.fabric.utilities.seed",
    ):
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

    def __iter__(self) -> Iterator[int]:
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
        losses = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/loss/") and v.numel() == 1
        }
        shown = " ".join(f"{k.removeprefix('train/')}={v:.4g}" for k, v in sorted(losses.items()))
        print(
            f"[unlearn] step {done}/{self.total} {shown} ({time.perf_counter() - self.start:.1f}s)".replace("  ", " "),
            flush=True,
        )


def accumulate_of(module: Any) -> int:
    """Micro-batches per optimizer step of ``module`` (1 for one without a step config)."""
    return int(getattr(getattr(module, "step_cfg", None), "accumulate", 1))


def stream_length(steps: int, accumulate: int, batch_size: int, world: int = 1) -> int:
    return steps * accumulate * batch_size * world


def fit(
    module: UnlearnModule,
    stream: PairedStream,
    pad_id: int,
    batch_size: int,
    steps: int,
    loop: LoopConfig,
    loggers: Sequence[Any] = (),
    callbacks: Sequence[Any] = (),
    default_root_dir: str | None = None,
    ckpt_path: str | None = None,
) -> L.Trainer:
    """Train ``module`` for ``steps`` optimizer steps on ``stream``; returns the Trainer.

    With ``ckpt_path`` (a checkpoint of this run) training continues after the checkpoint's step,
    on the stream's items from ``stream.start``. Ctrl-C raises ``KeyboardInterrupt`` (Lightning
    would turn it into ``SystemExit(1)``, indistinguishable from other exits)."""
    quiet_lightning()
    start = int(getattr(stream, "start", 0))
    world = loop.world_size
    sampler = InOrderSampler(stream, world, skip=start // world) if world > 1 else ResumeSampler(len(stream), start)
    loader = DataLoader(
        stream,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        drop_last=True,
        collate_fn=PairedCollate(pad_id),
        num_workers=loop.num_workers,
    )
    strategy = instantiate(loop.strategy) if isinstance(loop.strategy, Mapping) else loop.strategy
    if not sys.stdout.isatty():
        callbacks = [*callbacks, ProgressLines(loop.progress_every, steps)]
    trainer = L.Trainer(
        accelerator=loop.accelerator,
        devices=loop.devices,
        strategy=strategy,
        precision=loop.precision,  # type: ignore[arg-type]  # a str, checked against Lightning's names by Loop
        max_steps=steps,
        max_epochs=1,  # the stream holds exactly `steps` optimizer steps of items
        logger=list(loggers) if loggers else False,
        callbacks=list(callbacks),
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        enable_progress_bar=loop.live_bar(),
        enable_model_summary=False,
        # Lightning counts micro-batches (manual optimization), and would log the last step's values
        # again after each micro-batch: every N optimizer steps is every N·accumulate batches
        log_every_n_steps=loop.log_every_n_steps * accumulate_of(module),
        num_sanity_val_steps=0,
        # the samplers above decide which items each rank takes; Lightning's wrapper around a
        # one-process data-parallel run's ResumeSampler would index past a resumed run's items
        use_distributed_sampler=False,
        default_root_dir=default_root_dir,
        **loop.extra,
    )
    # one process inside a launched job (torchrun/srun: rank 0 fine-tuning a cached model) trains alone
    solo = alone() if world == 1 else contextlib.nullcontext()
    try:
        with solo:
            # weights_only: unpickling the checkpoint cannot call code (see unlearn.resume.checkpoint_step)
            trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path, weights_only=True if ckpt_path else None)
    except SystemExit:
        if trainer.state.status == TrainerStatus.INTERRUPTED:
            raise KeyboardInterrupt from None
        raise
    return trainer
