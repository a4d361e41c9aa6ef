"""TensorBoard and Jupyter Lab on the host: start or reuse, stop, list. Runs where the service runs.

Called through the agent (``service-start`` / ``service-stop`` / ``host-status``) on the box, or
in-process when there is no host. Stdlib only at import: ``mlconnect status`` pays for it.

The shape, and why:

* A service listens on 127.0.0.1 only (``--host`` / ``--ip``): the laptop reaches it through an SSH
  local forward, never through an open port on the LAN.
* It starts detached (new session, stdin /dev/null, output to ``experiments/.services/<name>.log``,
  no fd of the ssh channel), so it outlives the ssh command that started it.
* Its record ``experiments/.services/<name>.json`` (written atomically, 0600: Jupyter's token is
  in it) holds the pid and a marker the process carries on its command line
  (``python -X mlconnect-service=<id> ...``; CPython keeps unknown ``-X`` options). "Running" means
  the pid is alive, its live command line carries that marker, and the port answers: a pid reused
  by an unrelated process is never taken for the service, nor signalled.
* Jupyter's token travels in the environment (``JUPYTER_TOKEN``), not on the command line, where
  ``ps`` would show it to every user on the box.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from mlconnect.errors import MlconnectError
from mlconnect.expstate import now_iso, pid_exists, process_cmdline, process_matches
from mlconnect.fileio import atomic_write_json, locked, read_json
from mlconnect.layout import EXPERIMENTS_DIR
from mlconnect.ports import free_port_from, port_listening
from mlconnect.runs.procs import terminate

SERVICES = ("tensorboard", "jupyter")
DEFAULT_PORTS = {"tensorboard": 6006, "jupyter": 8888}
MARKER = "mlconnect-service="
SERVICES_DIR = ".services"  # hidden: store.list_experiments skips dot-folders
START_WAIT_S = float(os.environ.get("MLCONNECT_SERVICE_WAIT_S", "60"))
PORT_TRIES = 50
BIND_RETRIES = 3  # another process can take the port between our check and the service's bind


class ServiceError(MlconnectError):
    """A service did not start, or cannot be started here."""


# ------------------------------------------------------------------------------------------ paths


def services_dir(root: str | os.PathLike[str]) -> Path:
    return Path(root) / EXPERIMENTS_DIR / SERVICES_DIR


def record_path(root: str | os.PathLike[str], service: str) -> Path:
    return services_dir(root) / f"{service}.json"


def log_path(root: str | os.PathLike[str], service: str) -> Path:
    return services_dir(root) / f"{service}.log"


def _check_service(service: str) -> None:
    if service not in SERVICES:
        raise ServiceError(f"unknown service {service!r}", f"use one of {', '.join(SERVICES)}")


# ------------------------------------------------------------------------------------------ argv


def tensorboard_argv(python: str, marker: str, logdir: str, port: int) -> list[str]:
    """TensorBoard bound to loopback; ``tensorboard.main`` is the module its own console script runs."""
    return [python, "-X", marker, "-m", "tensorboard.main", "--logdir", logdir,
            "--host", "127.0.0.1", "--port", str(port)]


def jupyter_argv(python: str, marker: str, root: str, port: int) -> list[str]:
    """Jupyter Lab bound to loopback; ``--port-retries=0``: a busy port fails, and we pick the next."""
    return [python, "-X", marker, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
            "--port-retries=0", f"--ServerApp.root_dir={root}"]


def url_path(service: str, token: str | None = None) -> str:
    if service == "jupyter":
        return "/lab" + (f"?token={token}" if token else "")
    return "/"


def require_jupyterlab(python: str = sys.executable) -> None:
    """The one-line install hint when Jupyter Lab is missing (it is not a dependency of mlconnect)."""
    if importlib.util.find_spec("jupyterlab") is None:
        raise ServiceError(f"jupyterlab is not installed for {python} on {socket.gethostname()}",
                           f"install it there: `{python} -m pip install jupyterlab`")


# ------------------------------------------------------------------------------------------ probes


def _pid_is_ours(rec: dict) -> bool:
    """Alive and carrying this record's marker (a zombie has an empty command line: not alive)."""
    pid = rec.get("pid")
    return isinstance(pid, int) and process_matches(pid, rec.get("marker"))


def answers_http(port: int, timeout: float = 1.0) -> bool:
    """Any HTTP response counts (Jupyter answers 302/403 without its token): the server is up."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def is_running(rec: dict | None, *, http_check: bool = True) -> bool:
    if not rec or not _pid_is_ours(rec):
        return False
    port = rec.get("port")
    if not isinstance(port, int):
        return False
    return answers_http(port) if http_check else port_listening(port, timeout=0.3)


# ------------------------------------------------------------------------------------------ records


def read_record(root: str | os.PathLike[str], service: str) -> dict | None:
    try:
        rec = read_json(record_path(root, service))
    except (OSError, ValueError):  # a torn or foreign file is no record
        return None
    return rec if isinstance(rec, dict) else None


def _write_record(root: str | os.PathLike[str], rec: dict) -> None:
    path = record_path(root, rec["service"])
    atomic_write_json(path, rec)
    os.chmod(path, 0o600)


def _remove_record(root: str | os.PathLike[str], service: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        record_path(root, service).unlink()


@contextlib.contextmanager
def _locked(root: str | os.PathLike[str], service: str) -> Iterator[None]:
    """One start/stop at a time per service (two terminals running `mlconnect tensorboard` at once)."""
    d = services_dir(root)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    with locked(d / f"{service}.lock"):  # Windows without WSL: no lock, the record still decides
        yield


def public_row(rec: dict) -> dict:
    """The fields `status` shows; never the token (status output gets pasted into bug reports)."""
    return {"service": rec["service"], "name": rec["service"], "pid": rec.get("pid"),
            "port": rec.get("port"), "url_path": url_path(rec["service"]), "logdir": rec.get("logdir"),
            "started": rec.get("started")}


# ------------------------------------------------------------------------------------------ verbs


def list_services(root: str | os.PathLike[str]) -> list[dict]:
    """The services whose process is ours and whose port accepts connections (cheap: no HTTP)."""
    rows = []
    for service in SERVICES:
        rec = read_record(root, service)
        if is_running(rec, http_check=False):
            rows.append(public_row(rec))  # type: ignore[arg-type]
    return rows


def resolve_logdir(root: str | os.PathLike[str], experiment: str | None = None,
                   logdir: str | None = None) -> Path:
    """The experiments folder (every run), one experiment's folder, or a folder given outright."""
    root = Path(root)
    if logdir:
        p = Path(logdir).expanduser()
        p = p if p.is_absolute() else root / p
        if not p.is_dir():
            raise ServiceError(f"log folder {p} does not exist on {socket.gethostname()}",
                               "give an existing folder, or leave --logdir out for all experiments")
        return p.resolve()
    if experiment:
        from mlconnect.runs.store import find_experiment  # names the experiments there are

        return find_experiment(experiment, root).root.resolve()
    d = root / EXPERIMENTS_DIR
    d.mkdir(parents=True, exist_ok=True)  # TensorBoard shows runs as they appear
    return d.resolve()


def start_service(root: str | os.PathLike[str], service: str, *, experiment: str | None = None,
                  logdir: str | None = None, port: int | None = None, python: str = sys.executable,
                  wait_s: float | None = None) -> dict:
    """Reuse the running service, or start it; the record plus ``reused`` and ``url_path``.

    TensorBoard asked for another logdir than the running one's is restarted on it.
    """
    _check_service(service)
    root = Path(root).resolve()
    if service == "jupyter":
        require_jupyterlab(python)
        target_dir = root
    else:
        target_dir = resolve_logdir(root, experiment, logdir)
    with _locked(root, service):
        rec = read_record(root, service)
        if rec is not None:
            if is_running(rec) and rec.get("logdir") == str(target_dir):
                return {**rec, "reused": True, "url_path": url_path(service, rec.get("token"))}
            # Another logdir: restart on it. Stale (dead pid, or a pid that is not ours any more):
            # _stop signals nothing and only removes the record.
            _stop(root, rec)
        rec = _spawn(root, service, target_dir, port or DEFAULT_PORTS[service], python,
                     START_WAIT_S if wait_s is None else wait_s)
    return {**rec, "reused": False, "url_path": url_path(service, rec.get("token"))}


def stop_service(root: str | os.PathLike[str], service: str, grace_s: float = 10.0) -> dict:
    """End the service by its recorded pid's process group (never by name); remove the record."""
    _check_service(service)
    with _locked(root, service):
        rec = read_record(root, service)
        if rec is None:
            return {"service": service, "stopped": False, "pid": None, "reason": "not running"}
        ours = _stop(root, rec, grace_s)
    return {"service": service, "stopped": ours, "pid": rec.get("pid"),
            "reason": "stopped" if ours else "not running (stale record removed)"}


# ------------------------------------------------------------------------------------------ internals


def _spawn(root: Path, service: str, target_dir: Path, first_port: int, python: str, wait_s: float) -> dict:
    log = log_path(root, service)
    tried: set[int] = set()
    for _attempt in range(BIND_RETRIES):
        port = free_port_from(first_port, skip=tried, tries=PORT_TRIES)
        tried.add(port)
        marker = f"{MARKER}{uuid.uuid4().hex[:12]}"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        token = None
        if service == "jupyter":
            token = secrets.token_hex(24)
            env["JUPYTER_TOKEN"] = token
            argv = jupyter_argv(python, marker, str(target_dir), port)
        else:
            argv = tensorboard_argv(python, marker, str(target_dir), port)
        with open(log, "ab") as out:  # the child keeps its own copy of the fd
            out.write(f"\n--- {now_iso()} {' '.join(argv)}\n".encode())
            out.flush()
            start_offset = out.tell()
            proc = subprocess.Popen(argv, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        rec = {"service": service, "pid": proc.pid, "pgid": proc.pid, "port": port,
               "logdir": str(target_dir), "token": token, "started": now_iso(), "marker": marker,
               "cmdline": argv, "log": str(log), "host": socket.gethostname()}
        # Recorded before the wait: if this agent is cut off mid-wait, `--stop` still finds it.
        _write_record(root, rec)
        outcome = _await_ready(proc, port, wait_s)
        if outcome == "up":
            return rec
        _stop(root, rec, grace_s=2)
        tail = _log_tail(log, start_offset)
        if outcome == "exited" and _bind_failed(tail):
            continue  # lost the race for the port: try the next one
        why = "exited at once" if outcome == "exited" else f"did not answer within {wait_s:g} s"
        raise ServiceError(f"{service} {why} on {socket.gethostname()}: {tail or '(no output)'}",
                           f"see {log}")
    raise ServiceError(f"{service} could not bind a port from {first_port} on {socket.gethostname()}",
                       "stop what uses those ports, or pass another --port")


def _await_ready(proc: subprocess.Popen, port: int, wait_s: float) -> str:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return "exited"
        if answers_http(port, timeout=1.0):
            return "up"
        time.sleep(0.2)
    return "exited" if proc.poll() is not None else "timeout"


def _bind_failed(text: str) -> bool:
    t = text.lower()
    return "already in use" in t or "could not bind" in t or "address in use" in t


def _stop(root: Path, rec: dict, grace_s: float = 10.0) -> bool:
    """SIGTERM the group, SIGKILL after ``grace_s``; only when the pid is still ours. Removes the record."""
    ours = _pid_is_ours(rec)
    if ours:
        pid = int(rec["pid"])
        terminate(pid, int(rec.get("pgid") or pid), rec["marker"], grace_s, reap=lambda: _reap(pid))
        # An exiting process loses its command line before it is gone: wait for the pid itself, so
        # that "stopped" means the port and the pid are free (no signal is sent in this wait).
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _gone(pid):
            _reap(pid)
            time.sleep(0.05)
    if isinstance(rec.get("pid"), int):
        _reap(rec["pid"])
    _remove_record(root, rec["service"])
    return ours


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for its parent (it holds no port and runs no code)."""
    if not pid_exists(pid):
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return not Path("/proc/self").exists() and process_cmdline(pid) is None
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _reap(pid: int) -> None:
    """Collect the exit status when the service is our own child (no host: started in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _log_tail(path: Path, offset: int, n: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read()[-8192:].decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])
