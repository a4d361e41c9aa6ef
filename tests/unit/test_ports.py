"""Port picking on 127.0.0.1 with real sockets: what a TIME_WAIT leftover does to "is this port free"."""

from __future__ import annotations

import socket

from mlconnect.ports import first_free_port, port_free


def _time_wait_on_a_port() -> int:
    """A port with nothing listening but a TIME_WAIT connection on it: the side that owned the port closed
    first (as ssh does for a forwarded connection when the service ends the response). The listener sets
    SO_REUSEADDR as ssh's does: the leftover inherits it, which is what lets a later SO_REUSEADDR bind in."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = listener.accept()
        conn.close()    # the active close: this end of the connection goes to TIME_WAIT
        client.recv(1)  # sees EOF
        client.close()
    return port


def test_a_time_wait_leftover_does_not_make_the_port_taken_for_a_reuse_addr_listener() -> None:
    port = _time_wait_on_a_port()
    assert not port_free(port)  # a plain bind is refused (the reason the check has two modes) ...
    assert port_free(port, reuse_addr=True)  # ... but ssh's own bind (SO_REUSEADDR) succeeds
    assert first_free_port(port, reuse_addr=True) == port  # so the redialled tunnel keeps its port
    with socket.socket() as s:  # and that is what ssh sees: the port binds with SO_REUSEADDR
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_a_listening_port_is_taken_either_way() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert not port_free(port) and not port_free(port, reuse_addr=True)
        assert first_free_port(port, reuse_addr=True, tries=1) is None
