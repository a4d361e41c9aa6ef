"""The listening socket and the uvicorn run shared by `serve` and the deploy bundle server.

Standard library and uvicorn only (no torch, no engine): the bundle server imports it in a venv
with numpy + onnxruntime only.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
from typing import Any

from mlconnect.errors import MlconnectError


def bind_socket(bind: str, port: int, *, hint: str = "use --bind 127.0.0.1 and a port above 1024") -> socket.socket:
    """Bind before uvicorn starts, so a busy port is one clear error line rather than a log record."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the proto
    # says TCP. Without it, Nagle holds the response body behind its headers until the client's
    # delayed ACK: 40 ms per request on loopback.
    if not 0 <= port <= 65535:  # bind() would raise OverflowError, a traceback
        raise MlconnectError(f"port {port} is out of range", "use a port from 0 to 65535 (0: any free port)")
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise MlconnectError(f"port {port} on {bind} is already in use",
                                 "stop the other server or pick another --port") from None
        raise MlconnectError(f"cannot listen on {bind}:{port}: {exc.strerror}", hint) from None
    sock.listen(2048)
    return sock


class LoadErrors:
    """serving.api's ``on_load_error``: keeps why the model could not load and stops the server."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.server: Any = None

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        if self.server is not None:
            self.server.should_exit = True


def run_server(app: Any, sock: socket.socket, errors: LoadErrors, *, access_log: bool,
               stop_on_stdin_eof: bool = False) -> None:
    """Run uvicorn on ``sock`` until Ctrl-C / SIGTERM (graceful: in-flight requests finish), then close it."""
    import uvicorn

    # http/loop "auto": httptools and uvloop when installed (faster), h11 and asyncio otherwise.
    config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=10,
                            lifespan="on", server_header=False)
    server = errors.server = uvicorn.Server(config)
    if stop_on_stdin_eof:
        threading.Thread(target=_stop_on_eof, args=(server,), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def _stop_on_eof(server: Any) -> None:
    """Remote mode: the laptop's ssh closed our stdin (Ctrl-C, lost network): shut down gracefully."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    server.should_exit = True
