"""Plain tunnels over a real loopback sshd: traffic flows, and a busy local port moves to the next one."""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.request
from pathlib import Path

from mlconnect.remote.ssh import resolve_target
from mlconnect.remote.tunnel import open_tunnel
from support.sshd import SshdHost, free_port


def test_tunnel_forwards_and_skips_a_busy_port(sshd_host: SshdHost, tmp_path: Path) -> None:
    # the "service on the host": an HTTP server on 127.0.0.1
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    remote_port = srv.server_address[1]
    busy_port = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", busy_port))
    busy.listen()
    t = resolve_target(sshd_host.alias, ssh_config=str(sshd_host.ssh_config))
    tun = open_tunnel(t, [remote_port], [busy_port])
    try:
        local = tun.pairs[0][0]
        assert local != busy_port and local > busy_port
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as r:
            assert r.status == 200
    finally:
        tun.close()
        busy.close()
        srv.shutdown()
