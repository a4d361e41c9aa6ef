"""What a test asks /proc about processes it started: alive or not, group members, listening sockets."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path


def _stat_fields(pid: int) -> list[str]:
    # after the ")" closing the command name: state, ppid, pgrp, ...
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def gone(pid: int) -> bool:
    """No such process, or a zombie waiting to be reaped."""
    try:
        return _stat_fields(pid)[0] == "Z"
    except OSError:
        return True


def group_members(pgid: int) -> list[int]:
    """Pids of the processes in process group ``pgid``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(_stat_fields(int(d.name))[2]) == pgid:
                    found.append(int(d.name))
    return found


def _decode(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def listen_addresses(pids: Iterable[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the processes ``pids`` listen on, from /proc."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                    addr, port = f[1].split(":")
                    found.add((_decode(addr), int(port, 16)))
    return found


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred()`` until it is truthy or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())


def master_pid(control_path: str) -> int | None:
    """The ssh control master among the holders of its socket: the one whose parent is not a holder too
    (ControlPersist daemonized it)."""
    from mlconnect.remote.master import socket_holders

    holders = socket_holders(control_path)
    for pid in holders:
        try:
            ppid = int(_stat_fields(pid)[1])
        except (OSError, ValueError, IndexError):
            return pid
        if ppid not in holders:
            return pid
    return holders[0] if holders else None


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
