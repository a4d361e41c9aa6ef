"""SIGTERM and SIGHUP as Ctrl-C: what a command cleans up on Ctrl-C (a temp file, a half-written folder, a
tunnel) it also cleans up when ``kill``, ``timeout``, cron, systemd, ``docker stop`` or ``mlconnect stop``
ends it, or its terminal closes. Python's default for SIGTERM ends the process with no unwinding at all."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_interrupt(signums: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """SIGTERM / SIGHUP raise KeyboardInterrupt while inside, so cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can set handlers
        return
    old = {s: signal.signal(s, _raise_interrupt) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
