"""SIGTERM/SIGINT during training: noted by a handler, acted on at the end of the step (save, then stop)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from mlconnect.engine.experiment import resume_command
from mlconnect.errors import MlconnectError
from mlconnect.layout import ExperimentPaths


class TrainingInterrupted(MlconnectError):
    """SIGTERM/SIGINT arrived: a checkpoint was saved and the run can be resumed."""

    def __init__(self, signum: int, paths: ExperimentPaths, epoch: int, step: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at epoch {epoch + 1}, step {step}; "
                         f"checkpoint saved in {paths.checkpoints}",
                         f"continue with `{resume_command(paths.name)}`")
        self.exit_code = 128 + signum


def install_signals(on_signal: Callable[[int], None]) -> dict[int, Any]:
    """Route SIGTERM and SIGINT to ``on_signal``; returns the previous handlers (none off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, frame: Any) -> None:
        on_signal(signum)

    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}


def restore_signals(previous: dict[int, Any]) -> None:
    for s, h in previous.items():
        signal.signal(s, h)
