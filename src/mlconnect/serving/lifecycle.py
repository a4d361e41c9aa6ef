"""Serving an experiment on this machine: checks, the listening socket, uvicorn until stopped.

Binds before uvicorn starts (a busy port is one line), loads the best checkpoint weights-only,
answers until Ctrl-C or SIGTERM, then finishes in-flight requests and stops (uvicorn's graceful
shutdown). On a host, ``serving.hosted`` (the laptop) starts this module's entry point,
``python -m mlconnect.serving.lifecycle``, and sends the server described once as a :class:`ServeSpec`
(the API key inside it: stdin, never a command line) as its stdin's first line; it prints ``PORT_MARK``
+ where it listens as its first stdout line and stops when its stdin closes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlconnect.errors import ExperimentError, MlconnectError, UsageError
from mlconnect.layout import experiment_paths
from mlconnect.serving.listen import LoadErrors, bind_socket, run_server
from mlconnect.spec import Spec

DEVICES = ("cpu", "cuda", "mps")
DEFAULT_KEY_ENV = "MLCONNECT_API_KEY"
PORT_MARK = "mlconnect-serve: "  # the host side's first stdout line: where it listens, its pid
# serve's --max-batch, --max-items, --max-body-bytes, --batch-wait-ms and their defaults
LIMITS = {"max_batch": 64, "max_items": 1000, "max_body_bytes": 1 << 20, "batch_wait_ms": 0.0}


@dataclass(frozen=True)
class ServeSpec(Spec):
    """``serve NAME --host H`` as the host gets it: what to serve, where, and with which key and limits."""

    KIND = "serve spec"

    experiment: str
    port: int = 0  # on the host's 127.0.0.1; 0: any free one (the first stdout line says which)
    device: str = "cpu"
    api_key: str | None = None
    access_log: bool = False
    limits: dict[str, float] = field(default_factory=dict)  # any of LIMITS; the rest keep their defaults

    def __post_init__(self) -> None:
        if not isinstance(self.experiment, str) or not self.experiment:
            self.bad("experiment is not a non-empty string")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            self.bad("port is not a port number (0-65535)")
        if self.device not in DEVICES:
            self.bad(f"device is not one of {', '.join(DEVICES)}")
        if self.api_key is not None and not isinstance(self.api_key, str):
            self.bad("api_key is not a string")
        if not isinstance(self.access_log, bool):
            self.bad("access_log is not true or false")
        if not isinstance(self.limits, dict) or set(self.limits) - set(LIMITS) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.limits.values()):
            self.bad(f"limits is not a map of {', '.join(LIMITS)} to numbers")


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


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def serve_local(name: str, *, bind: str, port: int, device: str, api_key: str | None, max_batch: int,
                max_items: int, max_body_bytes: int, batch_wait_ms: float, access_log: bool,
                stop_on_stdin_eof: bool = False, log: Callable[[str], None] = _to_stderr) -> None:
    """Serve experiment ``name`` on this machine until stopped; raises if the model cannot load."""
    require_serve_extra()
    paths = check_experiment(name)
    check_device(device)
    sock = bind_socket(bind, port)
    sock.set_inheritable(True)
    port = sock.getsockname()[1]  # --port 0: the one the kernel picked
    if stop_on_stdin_eof:  # tell serve_remote on the laptop where to forward to
        sys.stdout.write(PORT_MARK + json.dumps({"port": port, "pid": os.getpid()}) + "\n")
        sys.stdout.flush()

    import torch

    from mlconnect.serving.app import create_app

    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to the event loop that parses HTTP: on the 2-core benchmark box one intra-op
        # thread gives a lower p50 and more req/s than two (benchmarks/serve_bench.py --threads).
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))

    errors = LoadErrors()
    app = create_app(paths.root, device=device, api_key=api_key, max_batch=max_batch,
                     max_body_bytes=max_body_bytes, max_items=max_items, batch_wait_ms=batch_wait_ms,
                     on_load_error=errors)
    if not _is_loopback(bind):
        warn = "" if api_key else " without an API key (--api-key-env): anyone who can reach it can query it"
        log(f"warning: listening on {bind}, not loopback{warn}")
    log(f"serving {paths.name} on http://{bind}:{port} (device {device}); Ctrl-C to stop")
    run_server(app, sock, errors, access_log=access_log, stop_on_stdin_eof=stop_on_stdin_eof)
    if errors.reasons:
        raise ExperimentError(f"could not load {paths.name}: {errors.reasons[0]}",
                              "retrain it or pull a complete copy (`mlconnect pull`)")


def serve_for_laptop(spec_line: bytes) -> None:
    """The host side of ``serve --host``: the spec from the laptop, served on 127.0.0.1 until stdin closes."""
    spec = ServeSpec.from_json(spec_line)
    serve_local(spec.experiment, bind="127.0.0.1", port=spec.port, device=spec.device, api_key=spec.api_key,
                access_log=spec.access_log, stop_on_stdin_eof=True,
                **{**LIMITS, **spec.limits})  # type: ignore[arg-type]


def main() -> int:
    """``python -m mlconnect.serving.lifecycle`` (started by ``serving.hosted``): errors as one line."""
    try:
        serve_for_laptop(sys.stdin.buffer.readline())
    except MlconnectError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)  # the laptop shows this line as its own
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
