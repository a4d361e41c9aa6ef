"""Free ports on this machine's 127.0.0.1: tunnels pick local ports with these, services pick host ports."""

from __future__ import annotations

import socket
import sys


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


def first_free_port(start: int, *, skip: set[int] | frozenset[int] = frozenset(), tries: int = 50) -> int | None:
    """The first free port in ``start .. start + tries - 1`` not in ``skip``; None when all are taken."""
    return next((p for p in range(start, start + tries) if p not in skip and port_free(p)), None)


def port_listening(port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False
