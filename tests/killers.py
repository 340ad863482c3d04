"""Test-only Lightning callbacks that simulate a machine dying mid-run."""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """Ends the process abruptly (no cleanup, like SIGKILL) once ``step`` optimizer steps are done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            os._exit(3)
