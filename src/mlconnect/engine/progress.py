"""What a person sees while training: a live bar on a terminal, plain log lines otherwise.

Every line also goes to ``training.log``. When stdout *is* training.log (a detached run whose
output is redirected there), lines are written once, not twice.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any


class Reporter:
    def __init__(self, log_path: Path, total_epochs: int) -> None:
        self.log_file = open(log_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 — closed in close()
        self.echo = not _same_file(sys.stdout, log_path)
        self.tty = self.echo and sys.stdout.isatty()
        self.total_epochs = total_epochs
        self._progress: Any = None
        self._task: Any = None
        self._next_plain = 0

    def log(self, line: str) -> None:
        stamp = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        self.log_file.write(f"{stamp} {line}\n")
        if self.echo:
            if self._progress is not None:
                self._progress.console.print(line, markup=False, highlight=False)
            else:
                print(line, flush=True)

    def start_epoch(self, epoch: int, steps: int, done: int = 0) -> None:
        self._steps = steps
        self._next_plain = max(1, steps // 4)
        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            if self._progress is None:
                self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TextColumn("{task.fields[info]}"), TimeRemainingColumn(), transient=True)
                self._progress.start()
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(f"epoch {epoch}/{self.total_epochs}", total=steps,
                                                 completed=done, info="")

    def step(self, epoch: int, step: int, loss: float | None, tokens_per_s: float, eta_s: float | None) -> None:
        info = (f"loss {loss:.4f}  " if loss is not None else "") + f"{tokens_per_s:,.0f} tok/s"
        if self.tty and self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif step >= self._next_plain and step < self._steps:
            self._next_plain += max(1, self._steps // 4)
            eta = f"  eta {eta_s:.0f}s" if eta_s is not None else ""
            self.log(f"epoch {epoch}/{self.total_epochs} step {step}/{self._steps}  {info}{eta}")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.log_file.close()


def _same_file(stream: Any, path: Path) -> bool:
    try:
        a = os.fstat(stream.fileno())
        b = os.stat(path)
    except (OSError, ValueError, AttributeError):
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def eta_s(epoch_elapsed: float, steps_done: int, steps_per_epoch: int, epochs_after: int) -> float | None:
    """Seconds left, from this epoch's pace: the rest of this epoch plus ``epochs_after`` whole epochs."""
    if steps_done == 0:
        return None
    return epoch_elapsed / steps_done * ((steps_per_epoch - steps_done) + steps_per_epoch * epochs_after)


def eta_total_s(elapsed_s: float, steps_done: int, steps_total: int) -> float | None:
    """Seconds left for the whole run, from its average pace so far (progress.json's ``eta_s``)."""
    if not steps_done or elapsed_s <= 0:
        return None
    return round(elapsed_s / steps_done * (steps_total - steps_done), 1)
