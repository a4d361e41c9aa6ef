"""`mlconnect bootstrap`: this machine's exact mlconnect in a venv on the host, plus the project's requirements.

The wheel is built here from the source tree this mlconnect runs from (an editable install), so a host
gets the laptop's code before it is on any package index. A build id, a hash of the files that go into
the wheel, identifies that code: it is baked into the wheel as ``mlconnect/_build.py`` (the agent reports
it, so equal version strings with different code are still told apart) and names the wheel cache.
``<venv>/mlconnect-build.json`` records what the last bootstrap installed, so a repeat does only what
changed, and nothing when the host is current.

Everything this writes on the host lives inside the venv (the venv, the marker, the staged wheel),
except ``pip install -r requirements.txt``, which runs in the synced project.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlconnect
from mlconnect import __version__
from mlconnect.errors import MlconnectError, RemoteError
from mlconnect.remote.extras import check_extras, has_extra, install_extra
from mlconnect.remote.failures import classify_command_failure, classify_ssh_failure
from mlconnect.remote.ssh import Target
from mlconnect.remote.wheel import build_wheel, find_source_root, last_error

DEFAULT_VENV = "~/.mlconnect/venv"
MARKER = "mlconnect-build.json"
PROBE_TIMEOUT_S = 60
VENV_TIMEOUT_S = 300  # ensurepip on a slow disk
PIP_TIMEOUT_S = 1800  # a CUDA torch is several GB
HOST_EXTRAS = "serve"  # the box serves models (FastAPI + uvicorn); plot/mlflow/dev stay laptop-side choices

Log = Callable[[str], None]


# ---- pure argv builders for the host -----------------------------------------------------------------

def venv_python(venv: str) -> str:
    return venv.rstrip("/") + "/bin/python"


def default_venv(target: Target) -> str:
    """The venv the host's configured ``python`` lives in (``<venv>/bin/python``), else ~/.mlconnect/venv."""
    py = target.host.python if target.host else None
    if py:
        head, _, exe = py.rstrip("/").rpartition("/")
        if head.endswith("/bin") and re.fullmatch(r"python(3(\.\d+)?)?", exe):
            return head[: -len("/bin")]
    return DEFAULT_VENV


def venv_argv(base_python: str, venv: str, *, system_site_packages: bool = False) -> list[str]:
    return [base_python, "-m", "venv", *(["--system-site-packages"] if system_site_packages else []), venv]


def pip_argv(python: str, *args: str) -> list[str]:
    """pip install, quiet about itself: no version nag, no prompt, no progress bars in a log."""
    return [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
            *args]


def torch_argv(python: str, spec: str) -> list[str]:
    """``--torch-spec`` may carry pip options too: ``"torch==2.4.1 --index-url https://.../cu121"``."""
    return pip_argv(python, *shlex.split(spec))


def wheel_install_argvs(python: str, wheel: str, *, same_version: bool) -> list[list[str]]:
    """Install the wheel with its dependencies and the ``serve`` extra (`mlconnect serve --host` runs there).

    pip skips a local wheel whose version is already installed, and a rebuilt wheel keeps the version:
    then the wheel is forced in without touching the dependencies, and a second call adds any new ones.
    """
    with_extra = f"{wheel}[{HOST_EXTRAS}]"
    if same_version:
        return [pip_argv(python, "--force-reinstall", "--no-deps", wheel), pip_argv(python, with_extra)]
    return [pip_argv(python, "--upgrade", with_extra)]


def rsync_wheel_argv(target: Target, wheel: Path, remote_dir: str) -> list[str]:
    return ["rsync", "-t", "--timeout=60", "-e", target.rsync_rsh(), str(wheel),
            target.rsync_path(remote_dir.rstrip("/") + "/")]


# The host's state in one round trip, run by the venv's python. cwd leaves sys.path so that a folder
# named mlconnect in the home (the default remote_root is ~/mlconnect/<project>) is not imported.
PROBE = r"""
import hashlib, json, os, sys
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]
out = {"python": sys.version.split()[0], "prefix": sys.prefix,
       "venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix), "version": None, "build": None}
try:
    import mlconnect
    out["version"], out["file"] = mlconnect.__version__, mlconnect.__file__
    from mlconnect._build import SOURCE_HASH
    out["build"] = SOURCE_HASH
except Exception:
    pass
def read(p):
    try:
        with open(p, "rb") as f:
            return f.read()
    except OSError:
        return None
try:
    out["marker"] = json.loads(read(os.path.join(sys.prefix, "mlconnect-build.json")) or "null")
except ValueError:
    out["marker"] = None
cfg = (read(os.path.join(sys.prefix, "pyvenv.cfg")) or b"").decode("utf-8", "replace")
out["system_site_packages"] = any(ln.replace(" ", "").lower() == "include-system-site-packages=true"
                                  for ln in cfg.splitlines())
req = read(os.path.join(os.path.expanduser(sys.argv[1]), "requirements.txt"))
out["requirements_sha"] = hashlib.sha256(req).hexdigest()[:16] if req is not None else None
print(json.dumps(out))
"""

WRITE_MARKER = ("import os, sys\np = os.path.join(sys.prefix, 'mlconnect-build.json')\n"
                "with open(p + '.tmp', 'w') as f:\n    f.write(sys.argv[1])\nos.replace(p + '.tmp', p)\n")


# ---- failures ----------------------------------------------------------------------------------------

_NETWORK = ("Failed to establish a new connection", "Temporary failure in name resolution",
            "Network is unreachable", "Connection timed out", "Could not fetch URL", "ProxyError",
            "Max retries exceeded")


def classify_step_failure(target: Target, argv: list[str], what: str, rc: int, output: str) -> MlconnectError:
    """One line for a failed bootstrap step on the host, from its exit code and output."""
    on = target.name
    prog = argv[0]
    flat = " ".join(output.split())  # Debian wraps its ensurepip message across lines
    if "ensurepip is not available" in flat or "No module named ensurepip" in flat:
        m = re.search(r"apt(?:-get)? install (python3[\d.]*-venv)", output)
        pkg = m.group(1) if m else "python3-venv"
        return RemoteError(f"{what} failed on {on}: ensurepip missing",
                           f"run `sudo apt install {pkg}` there, or pass --python with another interpreter",
                           command=argv, returncode=rc, stderr=output)
    if rc in (126, 127) and ("not found" in output or "No such file" in output or not output.strip()):
        return RemoteError(f"`{prog}` was not found on {on}",
                           "install Python 3.10+ there (`sudo apt install python3 python3-venv`), "
                           "or pass --python PATH", command=argv, returncode=rc, stderr=output)
    if "No space left on device" in output:
        return RemoteError(f"{what} failed on {on}: no space left on device",
                           "free disk space there (pip's cache: `pip cache purge`)",
                           command=argv, returncode=rc, stderr=output)
    if any(m in output for m in _NETWORK):
        return RemoteError(f"{what} failed on {on}: the host cannot reach the package index "
                           f"({last_error(output)})",
                           "give the host network access, or set PIP_INDEX_URL / https_proxy in the host's "
                           "env lines in mlconnect.toml", command=argv, returncode=rc, stderr=output)
    if "Could not find a version" in output or "No matching distribution" in output:
        return RemoteError(f"{what} failed on {on}: {last_error(output)}",
                           "check the requirement (and the host's Python version), or the index it uses",
                           command=argv, returncode=rc, stderr=output)
    return RemoteError(f"{what} failed on {on} (exit {rc}): {last_error(output)}",
                       "see the output above", command=argv, returncode=rc, stderr=output)


# ---- running on the host -----------------------------------------------------------------------------

def stream(target: Target, argv: list[str], *, what: str, timeout: float, log: Log, cwd: str = "~") -> None:
    """Run argv on the host, print each output line with the host's name, and bound it by ``timeout``.

    On timeout the local ssh is killed; the remote command loses its stdout and dies on its next write.
    """
    try:
        proc = target.popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", bufsize=1)
    except FileNotFoundError as exc:
        raise classify_step_failure(target, argv, what, 127, f"{exc.filename}: not found") from None
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    tail: deque[str] = deque(maxlen=60)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            if line:
                log(f"[{target.name}] {line}")
        rc = proc.wait()
    finally:
        timer.cancel()
    if timed_out.is_set():
        raise RemoteError(f"{what} on {target.name} did not finish within {timeout:g} s",
                          "check the host's network and disk, then run bootstrap again (it resumes)",
                          command=argv)
    if rc != 0:
        output = "\n".join(tail)
        raise (classify_ssh_failure(target, argv, rc, output)
               or classify_step_failure(target, argv, what, rc, output))


def probe(target: Target, python: str) -> dict[str, Any] | None:
    """The venv's state (see PROBE), or None when its python does not exist (or does not run)."""
    argv = [python, "-c", PROBE, target.remote_root]
    cp = target.run(argv, timeout=PROBE_TIMEOUT_S, check=False, cwd="~")
    if cp.returncode in (126, 127):
        return None
    if cp.returncode != 0:
        raise classify_command_failure(target, argv, cp.returncode, cp.stderr)
    try:
        return json.loads(cp.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise RemoteError(f"{python} on {target.name} printed something that is not JSON",
                          "a shell startup file or env line on the host may print to stdout; make it quiet",
                          command=argv[:2], returncode=cp.returncode, stderr=cp.stdout[-500:]) from None


@dataclass
class BootstrapResult:
    host: str
    venv: str
    python: str  # set this as the host's python in mlconnect.toml
    version: str
    build: str
    up_to_date: bool
    steps: list[str] = field(default_factory=list)  # "venv", "torch", "mlconnect", "requirements", extras
    requirements: bool = False  # the host's project has a requirements.txt (installed or current)
    python_configured: bool = False  # the host's python already is this venv's
    config_written: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bootstrap(target: Target, *, project_root: Path | None, venv: str | None = None,
              base_python: str | None = None, torch_spec: str | None = None,
              system_site_packages: bool = False, log: Log = lambda _m: None,
              cache: Path | None = None, extras: tuple[str, ...] = ()) -> BootstrapResult:
    """Create or update the venv on ``target`` so that it runs exactly this mlconnect; see the module doc."""
    t0 = time.monotonic()
    if target.is_local:
        raise MlconnectError("bootstrap installs mlconnect on a host; this machine already runs this one",
                             "pass --host NAME")
    extras = tuple(check_extras(extras))
    root = find_source_root()
    if root is None:
        raise MlconnectError(f"this mlconnect ({Path(mlconnect.__file__).parent}) was installed from a wheel, "
                             "so there is no source tree to build the host's wheel from",
                             "install it from a checkout (`pip install -e <checkout>`) and bootstrap again")
    wheel, build, cached = build_wheel(root, cache=cache, log=log)
    if cached:
        log(f"using the cached wheel for this source (build {build})")

    if project_root is not None and (project_root / "requirements.txt").is_file():
        from mlconnect.remote.sync import sync_project  # the host's requirements.txt may name project paths

        r = sync_project(target, project_root)
        log(f"synced the project to {target.name}:{target.remote_root} ({r.files} files sent)")

    explicit = venv is not None
    venv = venv or default_venv(target)
    state = probe(target, venv_python(venv))
    if state is not None and not state["venv"]:
        if explicit:
            raise MlconnectError(f"{venv} on {target.name} is a Python installation, not a venv",
                                 "pass --venv with a new folder (bootstrap creates it)")
        log(f"{venv_python(venv)} on {target.name} is not in a venv: using {DEFAULT_VENV}")
        venv = DEFAULT_VENV
        state = probe(target, venv_python(venv))
    py = venv_python(venv)
    steps: list[str] = []
    if state is None:
        base = base_python or "python3"
        log(f"creating {venv} on {target.name} with {base}"
            + (" (system site-packages visible)" if system_site_packages else ""))
        stream(target, venv_argv(base, venv, system_site_packages=system_site_packages),
               what=f"{base} -m venv", timeout=VENV_TIMEOUT_S, log=log)
        steps.append("venv")
        state = probe(target, py)
        if state is None:
            raise RemoteError(f"{base} -m venv ran on {target.name} but {py} does not start",
                              f"remove {venv} there and run bootstrap again, or pass --python")
    else:
        if system_site_packages and not state["system_site_packages"]:
            raise MlconnectError(f"{venv} on {target.name} exists without system site-packages",
                                 "--system-site-packages applies when a venv is created: remove it there, "
                                 "or pass another --venv")
        if base_python:
            log(f"{venv} exists on {target.name}: --python only applies when creating it")

    marker = state.get("marker") if isinstance(state.get("marker"), dict) else {}
    need_torch = bool(torch_spec) and marker.get("torch_spec") != torch_spec
    need_wheel = state["version"] != __version__ or state["build"] != build
    need_reqs = state["requirements_sha"] is not None and marker.get("requirements_sha") != state["requirements_sha"]
    need_extras = [e for e in extras if not has_extra(target, py, e)]  # --extra sweep: optuna
    up_to_date = not (need_torch or need_wheel or need_reqs or need_extras or steps)
    result = BootstrapResult(host=target.name, venv=venv, python=py, version=__version__, build=build,
                             up_to_date=up_to_date, steps=steps,
                             requirements=state["requirements_sha"] is not None,
                             python_configured=target.python == py)
    if result.up_to_date:
        log(f"{target.name}: already up to date (mlconnect {__version__}, build {build}, {py})")
        result.seconds = round(time.monotonic() - t0, 3)
        return result

    if need_torch:
        stream(target, torch_argv(py, str(torch_spec)), what=f"pip install {torch_spec}", timeout=PIP_TIMEOUT_S,
               log=log)
        steps.append("torch")
    if need_wheel:
        staging = f"{venv.rstrip('/')}/mlconnect-wheels"
        stage = f"{staging}/{build}"
        target.run(["mkdir", "-p", stage], cwd="~")
        argv = rsync_wheel_argv(target, wheel, stage)
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        if cp.returncode != 0:
            raise RemoteError(f"copying {wheel.name} to {target.name} failed (exit {cp.returncode}): "
                              f"{last_error(cp.stderr)}", "check rsync on both sides and the connection",
                              command=argv, returncode=cp.returncode, stderr=cp.stderr)
        for argv in wheel_install_argvs(py, f"{stage}/{wheel.name}", same_version=state["version"] == __version__):
            stream(target, argv, what=f"pip install {wheel.name}", timeout=PIP_TIMEOUT_S, log=log)
        target.run(["rm", "-rf", staging], cwd="~", check=False)  # installed: the copy is not needed
        steps.append("mlconnect")
    if need_reqs:
        stream(target, pip_argv(py, "-r", "requirements.txt"), what="pip install -r requirements.txt",
               timeout=PIP_TIMEOUT_S, log=log, cwd=target.remote_root)
        steps.append("requirements")
    for extra in need_extras:
        install_extra(target, py, extra, log)
        steps.append(extra)

    final = probe(target, py) or {}
    if final.get("version") != __version__ or final.get("build") != build:
        raise RemoteError(f"after installing, {py} on {target.name} imports mlconnect {final.get('version')} "
                          f"(build {final.get('build')}) from {final.get('file')}",
                          "something on the host shadows the venv's copy: PYTHONPATH, or an env line in "
                          "mlconnect.toml")
    record = {"version": __version__, "source_hash": build, "wheel": wheel.name,
              "requirements_sha": final.get("requirements_sha"),
              "torch_spec": torch_spec or marker.get("torch_spec"),
              "installed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    target.run([py, "-c", WRITE_MARKER, json.dumps(record)], cwd="~")
    log(f"{target.name}: mlconnect {__version__} (build {build}) installed in {venv}")
    result.seconds = round(time.monotonic() - t0, 3)
    return result
