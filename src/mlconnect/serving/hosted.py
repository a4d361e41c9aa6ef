"""Serving an experiment on a host: ``python -m mlconnect.serving.lifecycle`` there, an SSH tunnel here.

The server is described once, as a :class:`~mlconnect.serving.lifecycle.ServeSpec` sent as the host
side's first stdin line. The host side binds a free port on the box's 127.0.0.1 (``remote_port`` to
pick one) and says which on its first stdout line; this side forwards this machine's 127.0.0.1:PORT
to it (the next free port when PORT is busy). The API key, if any, is in the spec: it travels on the
ssh channel's stdin, never on a command line (``ps`` would show it). The remote server stops when
that channel closes, so Ctrl-C or SIGTERM here (or a dropped connection) never leaves a server
behind on the box.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mlconnect.errors import AgentProtocolError, AgentRefused, AgentUnreachable, MlconnectError
from mlconnect.serving.lifecycle import PORT_MARK, ServeSpec


def _wait_healthy(url: str, server: _HostServer, api_key: str | None, timeout: float) -> None:
    import httpx

    headers = {"X-API-Key": api_key} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise server.failure()
        try:
            # trust_env=False: a loopback URL must never go through an HTTP(S)_PROXY from the environment.
            if httpx.get(url, headers=headers, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise MlconnectError(f"the server on {server.target.name} did not become healthy within {timeout:.0f} s",
                         "check the experiment exists there (`mlconnect pull` / sync) and its log above")


class _HostServer:
    """The ssh child that runs the serving entry point on the host, with its output pumped.

    stdout carries one ``PORT_MARK`` line (the port the host's kernel picked, and the server's pid);
    stderr (uvicorn's log) is relayed here as it comes, except the host's own ``error: ...`` line,
    which is kept to become this command's one error line.
    """

    def __init__(self, target: Any, argv: list[str], proc: Any) -> None:
        import queue

        self.target, self.argv, self.proc = target, argv, proc
        self.ready: queue.Queue[dict | None] = queue.Queue()
        self.error_line: str | None = None
        self.tail: list[str] = []
        self.threads = [threading.Thread(target=self._pump_out, daemon=True),
                        threading.Thread(target=self._pump_err, daemon=True)]
        for t in self.threads:
            t.start()

    def _pump_out(self) -> None:
        import json

        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            if line.startswith(PORT_MARK):
                with contextlib.suppress(ValueError):
                    self.ready.put(json.loads(line[len(PORT_MARK):]))
                    continue
            sys.stderr.write(line)  # a chatty shell startup file on the host, say
            sys.stderr.flush()
        self.ready.put(None)

    def _pump_err(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            if line.startswith("error: "):
                self.error_line = line.strip()
                continue
            self.tail = (self.tail + [line])[-20:]
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write(line)
                sys.stderr.flush()

    def wait_listening(self, timeout: float) -> dict:
        """``{"port", "pid"}`` once the host side has bound its socket; its error if it exits first."""
        import queue

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                got = self.ready.get(timeout=0.2)
            except queue.Empty:
                continue
            if got is None:  # stdout closed: the host side is exiting
                with contextlib.suppress(Exception):
                    self.proc.wait(10)
                raise self.failure()
            return got
        raise MlconnectError(f"the server on {self.target.name} did not start within {timeout:.0f} s",
                             "see its output above; try `mlconnect serve NAME` on the box itself")

    def failure(self) -> MlconnectError:
        """Why the host side ended: its own error line, ssh's, or its exit code."""
        from mlconnect.remote.failures import classify_ssh_failure

        with contextlib.suppress(Exception):
            self.proc.wait(10)
        for t in self.threads:
            t.join(5)
        rc = self.proc.returncode
        if self.error_line:  # the host side's own one-line error: it refused on purpose
            msg, _, hint = self.error_line[len("error: "):].partition(" — ")
            return AgentRefused(f"{msg} (on {self.target.name})", hint, command=self.argv, returncode=rc)
        err = classify_ssh_failure(self.target, self.argv, rc if rc is not None else -1, "".join(self.tail))
        if err is not None:
            return AgentUnreachable.from_remote(err)
        return AgentProtocolError(f"the server on {self.target.name} exited with code {rc}", "see its output above",
                                  command=self.argv, returncode=rc, stderr="".join(self.tail))


def serve_remote(target: Any, name: str, *, port: int, remote_port: int | None, device: str,
                 api_key: str | None, access_log: bool, limits: dict[str, float], log: Callable[[str], None],
                 announce: Callable[[str], None]) -> None:
    """Start ``serve`` on ``target`` (its 127.0.0.1) and forward this machine's 127.0.0.1:port to it.

    The host side binds ``remote_port``, or any free port there (the host's kernel picks it and the
    first stdout line says which); this side forwards ``port``, or the next free one when it is busy,
    and calls ``announce(url)`` once the API answers. Ctrl-C, SIGTERM or SIGHUP here close the
    channel's stdin: the host side finishes in-flight requests and exits, then the tunnel closes.
    """
    import subprocess

    from mlconnect.interrupt import signals_interrupt
    from mlconnect.remote.tunnel import open_tunnel

    spec = ServeSpec(experiment=name, port=remote_port or 0, device=device, api_key=api_key,
                     access_log=access_log, limits=dict(limits))
    argv = [target.python, "-m", "mlconnect.serving.lifecycle"]
    tunnel = None
    server = None
    with signals_interrupt():
        try:
            # Its own session: a terminal's Ctrl-C reaches only us, and we stop the host side gracefully.
            proc = target.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
            server = _HostServer(target, target.command_argv(argv), proc)
            assert proc.stdin is not None
            proc.stdin.write((spec.to_json() + "\n").encode())  # the key travels inside the ssh channel
            proc.stdin.flush()
            there = server.wait_listening(timeout=120)
            tunnel = open_tunnel(target, [int(there["port"])], [port])
            local = tunnel.pairs[0][0]  # the transport moves to the next free port if ours is taken
            if local != port:
                log(f"port {port} is busy here; using {local}")
            _wait_healthy(f"http://127.0.0.1:{local}/health", server, api_key, timeout=180)
            log(f"serving {name} from {target.name} (pid {there.get('pid')}, 127.0.0.1:{there['port']} there) "
                f"on http://127.0.0.1:{local}; Ctrl-C to stop")
            announce(f"http://127.0.0.1:{local}")
            while proc.poll() is None:
                if tunnel.proc.poll() is not None:
                    raise MlconnectError(f"the tunnel to {target.name} closed (connection lost)",
                                         "run the command again; the server there stops with this one")
                time.sleep(0.3)
            if proc.returncode != 0:
                raise server.failure()
        except KeyboardInterrupt:
            log(f"stopping the server on {target.name}")
        finally:
            try:
                if server is not None:
                    _stop_host_side(server.proc)
            finally:
                if tunnel is not None:
                    tunnel.close()


def _stop_host_side(proc: Any) -> None:
    """Close the channel's stdin (the host side sees EOF and shuts down gracefully); end ssh if it hangs."""
    import subprocess

    with contextlib.suppress(OSError, ValueError):
        proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: do not wait any longer
        proc.terminate()  # closing our ssh closes the channel: the host side still sees EOF
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
