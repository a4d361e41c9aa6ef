"""Free ports on this machine's 127.0.0.1: tunnels pick local ports with these, services pick host ports.

The one owner of "which port next": ``free_port_from`` is what both tunnels (laptop side) and services
(host side) call; it says in one line which range was full, on which machine.
"""

from __future__ import annotations

import socket
import sys

from mlconnect.errors import MlconnectError

PORT_TRIES = 50  # ports tried from the wanted one up: enough for a few tunnels and stale services


def port_free(port: int, *, reuse_addr: bool = False) -> bool:
    """Whether 127.0.0.1:``port`` can be bound now. ``reuse_addr`` does not count TIME_WAIT leftovers as busy."""
    with socket.socket() as s:
        if reuse_addr and sys.platform != "win32":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def first_free_port(start: int, *, skip: set[int] | frozenset[int] = frozenset(),
                    tries: int = PORT_TRIES, reuse_addr: bool = False) -> int | None:
    """The first free port in ``start .. start + tries - 1`` not in ``skip``; None when all are taken.
    ``reuse_addr``: for a listener that sets SO_REUSEADDR itself (ssh's forwards do), which a TIME_WAIT
    leftover of an earlier connection on that port does not stop."""
    return next((p for p in range(start, start + tries)
                 if p not in skip and port_free(p, reuse_addr=reuse_addr)), None)


def free_port_from(start: int, *, skip: set[int] | frozenset[int] = frozenset(), tries: int = PORT_TRIES,
                   hint: str = "stop what uses them, or pass another --port", reuse_addr: bool = False) -> int:
    """``first_free_port``, or a one-line error naming the range and this machine when all are taken."""
    p = first_free_port(start, skip=skip, tries=tries, reuse_addr=reuse_addr)
    if p is None:
        raise MlconnectError(f"no free port in {start}-{start + tries - 1} on {socket.gethostname()}", hint)
    return p


def port_listening(port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False
