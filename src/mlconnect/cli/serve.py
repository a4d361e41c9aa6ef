"""``mlconnect serve NAME``: the experiment's recommendation API under uvicorn.

Here: binds 127.0.0.1:8000 (``--bind`` to change), loads the best checkpoint weights-only, answers
until Ctrl-C or SIGTERM, then finishes in-flight requests and stops (uvicorn's graceful shutdown).

With ``--host`` (or a project default host): starts the same command on the box through the SSH
transport, bound to a free port on the box's 127.0.0.1 (``--remote-port`` to pick one), and forwards
this machine's 127.0.0.1:PORT to it (the next free port when PORT is busy; the URL printed on stdout
says which), so http://127.0.0.1:8000 here reaches the model there. The API key, if any, travels on
the ssh channel's stdin, never on a command line (``ps`` would show it); the remote server stops
when that channel closes, so Ctrl-C or SIGTERM here (or a dropped connection) never leaves a server
behind on the box.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import sys
import threading
import time
from typing import Any

import typer

from mlconnect.cli.common import HostOpt, SshConfigOpt
from mlconnect.errors import ExperimentError, MlconnectError, UsageError
from mlconnect.layout import experiment_paths

DEVICES = ("cpu", "cuda", "mps")
DEFAULT_KEY_ENV = "MLCONNECT_API_KEY"


def check_experiment(name: str) -> Any:
    """The experiment folder, or a one-line error saying what is missing."""
    paths = experiment_paths(name)
    if not paths.root.is_dir():
        raise ExperimentError(f"no experiment {name!r} at {paths.root}",
                              "check the name (ls experiments/) or train one with `mlconnect train`")
    if not paths.config.is_file():
        raise ExperimentError(f"{paths.root} has no config.yaml", "is this an experiment folder?")
    if not (paths.checkpoint("best").is_file() or paths.checkpoint("last").is_file()):
        raise ExperimentError(f"{paths.root} has no checkpoint yet",
                              "wait for the first epoch to finish, or `mlconnect pull` it from the box")
    if not paths.vocab.is_file():
        raise ExperimentError(f"{paths.vocab} is missing", "the id map is written with the first checkpoint")
    return paths


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}", f"use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise MlconnectError("CUDA is not available on this machine",
                             "use --device cpu, or serve on the GPU box with --host")
    if device == "mps" and not torch.backends.mps.is_available():
        raise MlconnectError("MPS is not available on this machine", "use --device cpu")


def read_api_key(api_key_env: str | None) -> str | None:
    """``--api-key-env VAR`` must name a set variable; otherwise MLCONNECT_API_KEY if set; else none."""
    if api_key_env:
        key = os.environ.get(api_key_env, "")
        if not key:
            raise UsageError(f"--api-key-env {api_key_env}: that environment variable is empty or unset",
                             f"export {api_key_env}=<a long random key> first")
        return key
    return os.environ.get(DEFAULT_KEY_ENV) or None


def bind_socket(bind: str, port: int) -> socket.socket:
    """Bind before uvicorn starts, so a busy port is one clear error line rather than a log record."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only when the proto
    # says TCP. Without it, Nagle holds the response body behind its headers until the client's
    # delayed ACK: 40 ms per request on loopback.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bind, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise MlconnectError(f"port {port} on {bind} is already in use",
                                 "stop the other server or pick another --port") from None
        raise MlconnectError(f"cannot listen on {bind}:{port}: {exc.strerror}",
                             "use --bind 127.0.0.1 and a port above 1024") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _is_loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def require_serve_extra() -> None:
    """fastapi and uvicorn are the `serve` extra, not base dependencies: one line instead of a traceback."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise MlconnectError(f"serving needs {' and '.join(missing)}, which {sys.executable} does not have",
                             "pip install 'mlconnect[serve]' (`mlconnect bootstrap` installs it on a host)")


def serve_local(name: str, *, bind: str, port: int, device: str, api_key: str | None, max_batch: int,
                max_items: int, max_body_bytes: int, batch_wait_ms: float, access_log: bool,
                stop_on_stdin_eof: bool = False) -> None:
    """Serve experiment ``name`` on this machine until stopped; raises if the model cannot load."""
    require_serve_extra()
    paths = check_experiment(name)
    check_device(device)
    sock = bind_socket(bind, port)
    port = sock.getsockname()[1]  # --port 0: the one the kernel picked
    if stop_on_stdin_eof:  # tell serve_remote on the laptop where to forward to
        import json

        sys.stdout.write(PORT_MARK + json.dumps({"port": port, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()

    import torch
    import uvicorn

    from mlconnect.serving.app import create_app

    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to the event loop that parses HTTP: on the 2-core benchmark box one intra-op
        # thread gives a lower p50 and more req/s than two (benchmarks/serve_bench.py --threads).
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

    load_error: list[str] = []
    server: uvicorn.Server | None = None

    def failed(reason: str) -> None:
        load_error.append(reason)
        if server is not None:
            server.should_exit = True

    app = create_app(paths.root, device=device, api_key=api_key, max_batch=max_batch,
                     max_body_bytes=max_body_bytes, max_items=max_items, batch_wait_ms=batch_wait_ms,
                     on_load_error=failed)
    # http/loop "auto": httptools and uvloop when installed (faster), h11 and asyncio otherwise.
    config = uvicorn.Config(app, log_level="info", access_log=access_log, timeout_graceful_shutdown=10,
                            lifespan="on", server_header=False)
    server = uvicorn.Server(config)
    if not _is_loopback(bind):
        warn = "" if api_key else " without an API key (--api-key-env): anyone who can reach it can query it"
        typer.echo(f"warning: listening on {bind}, not loopback{warn}", err=True)
    if stop_on_stdin_eof:
        threading.Thread(target=_stop_on_eof, args=(server,), daemon=True).start()
    typer.echo(f"serving {paths.name} on http://{bind}:{port} (device {device}); Ctrl-C to stop", err=True)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if load_error:
        raise ExperimentError(f"could not load {paths.name}: {load_error[0]}",
                              "retrain it or pull a complete copy (`mlconnect pull`)")


def _stop_on_eof(server: Any) -> None:
    """Remote mode: the laptop's ssh closed our stdin (Ctrl-C, lost network): shut down gracefully."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    server.should_exit = True


PORT_MARK = "mlconnect-serve: "  # the host side's first stdout line: where it listens, its pid


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
    """The ssh child that runs ``serve --stdin-control`` on the host, with its output pumped.

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
        from mlconnect.remote.ssh import classify_ssh_failure

        with contextlib.suppress(Exception):
            self.proc.wait(10)
        for t in self.threads:
            t.join(5)
        rc = self.proc.returncode
        if self.error_line:
            msg, _, hint = self.error_line[len("error: "):].partition(" — ")
            return MlconnectError(f"{msg} (on {self.target.name})", hint)
        err = classify_ssh_failure(self.target, self.argv, rc if rc is not None else -1, "".join(self.tail))
        return err or MlconnectError(f"the server on {self.target.name} exited with code {rc}",
                                     "see its output above")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_remote(name: str, *, host: str, ssh_config: str | None, port: int, remote_port: int | None,
                 device: str, api_key: str | None, extra: list[str]) -> None:
    """Start ``serve`` on the host (its 127.0.0.1) and forward this machine's 127.0.0.1:port to it.

    The host side binds ``remote_port``, or any free port there (the host's kernel picks it and the
    first stdout line says which); this side forwards ``port``, or the next free one when it is busy.
    Ctrl-C, SIGTERM or SIGHUP here close the channel's stdin: the host side finishes in-flight
    requests and exits, then the tunnel closes.
    """
    import signal
    import subprocess

    from mlconnect.cli.common import info
    from mlconnect.remote.ssh import resolve_target
    from mlconnect.remote.tunnel import open_tunnel

    target = resolve_target(host, ssh_config=ssh_config)
    argv = [target.python, "-m", "mlconnect", "serve", name, "--host", "local", "--bind", "127.0.0.1",
            "--port", str(remote_port or 0), "--device", device, "--stdin-control", *extra]
    old_handlers = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    tunnel = None
    server = None
    try:
        # Its own session: a terminal's Ctrl-C reaches only us, and we stop the host side gracefully.
        proc = target.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
        server = _HostServer(target, target.command_argv(argv), proc)
        assert proc.stdin is not None
        proc.stdin.write(((api_key or "") + "\n").encode())  # the key travels inside the ssh channel
        proc.stdin.flush()
        there = server.wait_listening(timeout=120)
        tunnel = open_tunnel(target, [int(there["port"])], [port])
        local = tunnel.pairs[0][0]  # the transport moves to the next free port if ours is taken
        if local != port:
            info(f"port {port} is busy here; using {local}")
        _wait_healthy(f"http://127.0.0.1:{local}/health", server, api_key, timeout=180)
        info(f"serving {name} from {target.name} (pid {there.get('pid')}, 127.0.0.1:{there['port']} there) "
             f"on http://127.0.0.1:{local}; Ctrl-C to stop")
        typer.echo(f"http://127.0.0.1:{local}")  # stdout: the URL, for people and scripts alike
        sys.stdout.flush()
        while proc.poll() is None:
            if tunnel.proc.poll() is not None:
                raise MlconnectError(f"the tunnel to {target.name} closed (connection lost)",
                                     "run the command again; the server there stops with this one")
            time.sleep(0.3)
        if proc.returncode != 0:
            raise server.failure()
    except KeyboardInterrupt:
        info(f"stopping the server on {target.name}")
    finally:
        try:
            if server is not None:
                _stop_host_side(server.proc)
        finally:
            if tunnel is not None:
                tunnel.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)


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


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        name: str | None = typer.Argument(None, help="Experiment name (experiments/NAME) or folder."),
        bundle: str | None = typer.Option(None, "--bundle", metavar="DIR",
                                          help="Serve an exported bundle instead (ONNX Runtime, no torch)."),
        host: str | None = HostOpt,
        port: int = typer.Option(8000, "--port", min=0, max=65535,
                                 help="Port on this machine (the next free one when busy, with --host; "
                                      "0: any free port, local serving)."),
        bind: str = typer.Option("127.0.0.1", "--bind", help="Address to listen on (local serving)."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or mps."),
        api_key_env: str | None = typer.Option(None, "--api-key-env", metavar="VAR",
                                               help=f"Require X-API-Key equal to $VAR (default: "
                                                    f"${DEFAULT_KEY_ENV} when set)."),
        max_batch: int = typer.Option(64, "--max-batch", min=1, max=4096,
                                      help="Requests per /recommend/batch and sequences per forward."),
        max_items: int = typer.Option(1000, "--max-items", min=1, help="Ids per sequence."),
        max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", min=1024, help="Request body limit."),
        batch_wait_ms: float = typer.Option(0.0, "--batch-wait-ms", min=0.0, max=50.0,
                                            help="Wait this long to collect concurrent requests into "
                                                 "one forward (0: batch only what is already queued)."),
        access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every request."),
        remote_port: int | None = typer.Option(None, "--remote-port", min=1, max=65535,
                                               help="Port on the host's 127.0.0.1 (default: any free one)."),
        ssh_config: str | None = SshConfigOpt,
        stdin_control: bool = typer.Option(False, "--stdin-control", hidden=True,
                                           help="Internal: API key on stdin's first line; stop at EOF."),
    ) -> None:
        """Serve an experiment as a recommendation API (FastAPI + uvicorn)."""
        limits = dict(max_batch=max_batch, max_items=max_items, max_body_bytes=max_body_bytes,
                      batch_wait_ms=batch_wait_ms)
        if (name is None) == (bundle is None):
            raise UsageError("give an experiment NAME or --bundle DIR", "exactly one of the two")
        if bundle is not None:  # mlconnect.deploy: here only, like the image's command
            from mlconnect.deploy.server import serve_bundle

            if host not in (None, "local"):
                raise UsageError("--bundle serves on this machine", "copy the bundle to the box and serve it there")
            serve_bundle(bundle, bind=bind, port=port, api_key=read_api_key(api_key_env),
                         log=lambda m: typer.echo(m, err=True), **limits)
            return
        if stdin_control:  # we were started by serve_remote on the laptop
            key = sys.stdin.buffer.readline().decode().strip() or None
            serve_local(name, bind=bind, port=port, device=device, api_key=key, access_log=access_log,
                        stop_on_stdin_eof=True, **limits)
            return
        api_key = read_api_key(api_key_env)
        if host is None:
            from mlconnect.settings import load_settings

            host = load_settings(overrides={"ssh_config": ssh_config}).default_host
        if host is None or host in ("local", "localhost-local"):
            serve_local(name, bind=bind, port=port, device=device, api_key=api_key, access_log=access_log,
                        **limits)
            return
        if bind != "127.0.0.1":
            raise UsageError("--bind applies to local serving only",
                             "on the host the server always binds 127.0.0.1; it is reached through the tunnel")
        if port == 0:
            raise UsageError("--port 0 applies to local serving only", "pick a port on this machine, e.g. 8000")
        extra = [f"--{k.replace('_', '-')}={v}" for k, v in limits.items()]
        if access_log:
            extra.append("--access-log")
        serve_remote(name, host=host, ssh_config=ssh_config, port=port, remote_port=remote_port,
                     device=device, api_key=api_key, extra=extra)
