"""Signalling the processes mlconnect started (training runs and services), and only those.

Both the run launcher and the services record a pid, its process group and a marker the process
carries on its command line (``-X mlconnect-run=<id>`` / ``-X mlconnect-service=<id>``). Every
signal goes through :func:`terminate` here, which checks that marker against the live command
line first (:func:`mlconnect.expstate.process_matches`), so a reused pid is never signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from mlconnect.expstate import process_matches


def signal_marked(pid: int, pgid: int, marker: str, sig: int) -> bool:
    """Send ``sig`` to the group ``pgid`` (or ``pid`` alone when it has left the group), only
    while ``pid`` still carries ``marker``. True when a signal was sent."""
    if not process_matches(pid, marker):
        return False
    try:
        if os.getpgid(pid) == pgid:
            os.killpg(pgid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    return True


def terminate(pid: int, pgid: int, marker: str, grace_s: float,
              reap: Callable[[], None] = lambda: None) -> str:
    """SIGTERM, then SIGKILL after ``grace_s``: ``"not ours"``, ``"terminated"`` or ``"killed"``.

    ``reap`` collects the exit status when the process is our own child (a zombie still shows
    its marker on some systems until it is reaped).
    """
    if not signal_marked(pid, pgid, marker, signal.SIGTERM):
        return "not ours"
    if _wait_gone(pid, marker, grace_s, reap):
        return "terminated"
    signal_marked(pid, pgid, marker, signal.SIGKILL)
    _wait_gone(pid, marker, 5.0, reap)
    return "killed"


def _wait_gone(pid: int, marker: str, timeout: float, reap: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap()
        if not process_matches(pid, marker):
            return True
        time.sleep(0.05)
    return not process_matches(pid, marker)
