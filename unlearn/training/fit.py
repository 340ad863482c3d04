"""Running the Lightning loop for one training phase (fine-tuning or unlearning)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import lightning as L
from torch.utils.data import DataLoader

from unlearn.data.paired import PairedCollate, PairedStream
from unlearn.training.module import UnlearnModule


@dataclass
class LoopConfig:
    """Lightning Trainer settings that a user may change (the rest is fixed by manual optimisation)."""

    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    log_every_n_steps: int = 1
    enable_progress_bar: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.precision in ("16-mixed", "16", 16):
            raise ValueError("trainer.precision=16-mixed is not supported (the manual step does no loss scaling); use bf16-mixed or 32-true")


def quiet_lightning() -> None:
    """Lightning's start-up banners say nothing a user of this framework can act on."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # checkpoints hold the state after each optimizer step, which is what resuming needs
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    warnings.filterwarnings("ignore", message=".*The number of training batches.*")
    warnings.filterwarnings("ignore", message=".*LightningModule.*has parameters that were not used.*")


def stream_length(steps: int, accumulate: int, batch_size: int, world: int = 1) -> int:
    return steps * accumulate * batch_size * world


def fit(module: UnlearnModule, stream: PairedStream, pad_id: int, batch_size: int, steps: int, loop: LoopConfig, loggers: Sequence[Any] = (), callbacks: Sequence[Any] = (), default_root_dir: str | None = None, ckpt_path: str | None = None) -> L.Trainer:
    """Train ``module`` for ``steps`` optimizer steps on ``stream``; returns the Trainer."""
    quiet_lightning()
    loader = DataLoader(stream, batch_size=batch_size, shuffle=False, drop_last=True, collate_fn=PairedCollate(pad_id), num_workers=loop.num_workers)
    trainer = L.Trainer(
        accelerator=loop.accelerator,
        devices=loop.devices,
        strategy=loop.strategy,
        precision=loop.precision,
        max_steps=steps,
        max_epochs=1,  # the stream holds exactly `steps` optimizer steps of items
        logger=list(loggers) if loggers else False,
        callbacks=list(callbacks),
        enable_checkpointing=bool(callbacks) and any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
        enable_progress_bar=loop.enable_progress_bar,
        enable_model_summary=False,
        log_every_n_steps=loop.log_every_n_steps,
        num_sanity_val_steps=0,
        default_root_dir=default_root_dir,
        **loop.extra,
    )
    trainer.fit(module, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer
