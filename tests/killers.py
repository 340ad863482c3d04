"""Test-only Lightning callbacks that simulate a machine dying, or a user pressing Ctrl-C, mid-run."""

from __future__ import annotations

import os
import signal
from typing import Any

from lightning.pytorch.callbacks import Callback


def _die() -> None:
    os._exit(3)  # no cleanup at all, like SIGKILL


def _ctrl_c() -> None:
    # a job started in the background by a non-interactive shell inherits SIGINT ignored; a
    # terminal's Ctrl-C reaches Python's default handler, so restore that one first
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    os.kill(os.getpid(), signal.SIGINT)  # the real signal, as a terminal sends it


ACTIONS = {"kill": _die, "sigint": _ctrl_c}


class KillAt(Callback):
    """Ends the process abruptly (no cleanup, like SIGKILL) once ``step`` optimizer steps are done;
    ``action: sigint`` sends the process a SIGINT (Ctrl-C) instead."""

    def __init__(self, step: int, action: str = "kill") -> None:
        self.step, self.action = step, ACTIONS[action]

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step >= self.step:
            self.action()


class KillInEvaluation(Callback):
    """After training, makes the unlearned model's evaluation end the process (``kill``) or receive
    a SIGINT (``sigint``) once it has started computing, i.e. during the evaluation."""

    def __init__(self, action: str = "kill") -> None:
        self.action = ACTIONS[action]

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        import unlearn.phases as phases

        original = phases.evaluate
        action = self.action

        def evaluate(s: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            inner = s.evaluator.evaluate

            def interrupted(*a: Any, **k: Any) -> Any:
                action()
                return inner(*a, **k)

            s.evaluator.evaluate = interrupted
            return original(s, model, *args, **kwargs)

        phases.evaluate = evaluate
