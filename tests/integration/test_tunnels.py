"""Plain tunnels over a real loopback sshd: traffic flows, a busy local port moves to the next one, and
every way the command ends (Ctrl-C, SIGTERM, SIGHUP, SIGKILL) takes its ssh and its local port with it."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mlconnect.ports import port_listening
from mlconnect.remote.ssh import resolve_target
from mlconnect.remote.tunnel import open_tunnel
from support.procs import children, comm, gone, wait_until
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
        _request_reading_to_eof(local)  # ssh closes its end first: a TIME_WAIT stays on the local port
        (ssh_pid,) = _ssh_children(proc.pid)
        os.kill(ssh_pid, signal.SIGKILL)  # the connection is gone, as after a sleep
        assert wait_until(lambda: any("reconnected" in line for line in err), 20), err
        assert any("dropped; reconnecting" in line for line in err)
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as r:  # same port again
            assert r.status == 200
        new_ssh = _ssh_children(proc.pid)
        assert new_ssh and ssh_pid not in new_ssh
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(15)
        srv.shutdown()
    assert rc == 0
    assert all(gone(p) for p in new_ssh)  # Ctrl-C closed the redialled tunnel too


def _request_reading_to_eof(port: int) -> None:
    """One HTTP/1.0 request through the tunnel, read until the far end closes: the service closes, then
    ssh closes our connection before we do, which leaves its side in TIME_WAIT on the tunnel's port (the
    state a browser tab leaves behind; the redial must not take it for a busy port)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while s.recv(65536):
            pass
        time.sleep(0.2)  # ssh's close has happened (we saw EOF); ours comes second


def _ssh_children(pid: int) -> list[int]:
    return [c for c in children(pid) if comm(c) == "ssh"]


@pytest.fixture
def http_service():
    """The "service on the host": an HTTP server on 127.0.0.1."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


@pytest.mark.parametrize(("sig", "guard"), [
    pytest.param(signal.SIGINT, "pdeathsig", id="ctrl-c"),
    pytest.param(signal.SIGTERM, "pdeathsig", id="sigterm"),
    pytest.param(signal.SIGHUP, "pdeathsig", id="sighup-terminal-closed"),
    # nothing runs in the command: the kernel ends its ssh (Linux)
    pytest.param(signal.SIGKILL, "pdeathsig", id="sigkill-pdeathsig"),
    # the portable guard (macOS): a watchdog sees our pipe close
    pytest.param(signal.SIGKILL, "watchdog", id="sigkill-watchdog"),
    pytest.param(signal.SIGTERM, "watchdog", id="sigterm-watchdog"),
])
def test_every_way_the_command_ends_takes_its_tunnel(sshd_host: SshdHost, tmp_path: Path, http_service: int,
                                                     sig: signal.Signals, guard: str) -> None:
    env = {**os.environ, "MLCONNECT_SSH_CONFIG": str(sshd_host.ssh_config), "MLCONNECT_HOST": "",
           "MLCONNECT_TUNNEL_GUARD": guard}
    proc = subprocess.Popen([sys.executable, "-m", "mlconnect", "tunnel", "--port", str(http_service),
                             "--host", sshd_host.alias, "--json"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        local = int(json.loads(proc.stdout.readline())[0]["local"].rsplit(":", 1)[1])
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=10) as r:
            assert r.status == 200
        (ssh_pid,) = _ssh_children(proc.pid)
        proc.send_signal(sig)
        proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert wait_until(lambda: gone(ssh_pid), 10), f"ssh {ssh_pid} outlived the command ({sig.name}, {guard})"
    assert wait_until(lambda: not port_listening(local), 5), f"port {local} still answers"
    if sig != signal.SIGKILL:
        assert proc.returncode == 0, proc.stderr.read()  # an orderly end, as for Ctrl-C
