"""Plain tunnels over a real loopback sshd: traffic flows, and a busy local port moves to the next one."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from mlconnect.remote.ssh import resolve_target, wait_until
from mlconnect.remote.tunnel import open_tunnel
from support.procs import gone
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


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_tunnel_redials_after_the_connection_drops(sshd_host: SshdHost, tmp_path: Path) -> None:
    """The laptop slept / Wi-Fi changed: ssh dies, the tunnel comes back on the same local port by itself."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    env = {**os.environ, "MLCONNECT_SSH_CONFIG": str(sshd_host.ssh_config), "MLCONNECT_HOST": ""}
    proc = subprocess.Popen([sys.executable, "-m", "mlconnect", "tunnel", "--port", str(srv.server_address[1]),
                             "--host", sshd_host.alias, "--json"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    try:
        local = int(json.loads(proc.stdout.readline())[0]["local"].rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as r:
            assert r.status == 200
        (ssh_pid,) = _children(proc.pid)
        os.kill(ssh_pid, signal.SIGKILL)  # the connection is gone, as after a sleep
        assert wait_until(lambda: any("reconnected" in line for line in err), 20), err
        assert any("dropped; reconnecting" in line for line in err)
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as r:  # same port again
            assert r.status == 200
        new_ssh = _children(proc.pid)
        assert new_ssh and ssh_pid not in new_ssh
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(15)
        srv.shutdown()
    assert rc == 0
    assert all(gone(p) for p in new_ssh)  # Ctrl-C closed the redialled tunnel too
