"""Progress display for anything that takes more than a few seconds (rich, on stderr)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_console = Console(stderr=True)


class Steps:
    """A labelled progress bar over a known number of steps; also prints one line per step when
    stderr is not a terminal (CI logs), so progress stays visible there."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, total
        self.live = _console.is_terminal
        self.start = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_console,
            transient=True,
        )

    def __enter__(self) -> "Steps":
        if self.live:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total)
        return self

    def advance(self, what: str = "") -> None:
        if self.live:
            self.progress.update(self.task, advance=1, description=f"{self.label}: {what}" if what else self.label)
        else:
            print(
                f"[unlearn] {self.label}: {what} ({time.perf_counter() - self.start:.1f}s)", file=sys.stderr, flush=True
            )

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self.live:
            self.progress.stop()


def say(message: str) -> None:
    """One status line on stderr (kept out of stdout, which carries the results table)."""
    _console.print(f"[unlearn] {message}", markup=False, highlight=False)
