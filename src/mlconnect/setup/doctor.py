"""`mlconnect doctor`: the setup guide's validation checklist as a command.

Each check reports PASS, WARN or FAIL with a one-line fix. SSH is checked first (every other host
check rides on its multiplexed connection); the rest run concurrently, each under its own timeout,
so a healthy host answers in a few seconds and an unhealthy one within ``DEADLINE_S``.
Without a host (no --host, no default_host) the checks run on this machine.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlconnect import __version__, wsl
from mlconnect.errors import MlconnectError
from mlconnect.ports import port_free
from mlconnect.remote.ssh import Target, resolve_target
from mlconnect.settings import load_settings
from mlconnect.setup.doctor_gpu import PY_NVIDIA_SMI, PY_TORCH, gpu_verdict

DEADLINE_S = 28.0  # the whole doctor (without --smoke) stays under 30 s
SMOKE_TIMEOUT_S = 300.0
TUNNEL_PORTS = (6006, 8888, 8000)
PASS, WARN, FAIL = "PASS", "WARN", "FAIL"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
    seconds: float = 0.0


@dataclass
class DoctorReport:
    where: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(c.status == FAIL for c in self.checks)

    def summary(self) -> str:
        n = {s: sum(c.status == s for c in self.checks) for s in (PASS, WARN, FAIL)}
        verdict = "FAILED" if self.failed else "ok"
        return f"doctor {verdict}: {n[PASS]} pass, {n[WARN]} warn, {n[FAIL]} fail in {self.seconds:.1f} s"

    def to_json(self) -> dict:
        return {"host": self.where, "ok": not self.failed, "seconds": round(self.seconds, 2),
                "checks": [asdict(c) | {"seconds": round(c.seconds, 2)} for c in self.checks]}


class _Result(Exception):
    """Raised by a check body to end with a status (keeps the bodies flat)."""

    def __init__(self, status: str, detail: str, fix: str = "") -> None:
        super().__init__(detail)
        self.status, self.detail, self.fix = status, detail, fix


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _py(target: Target, code: str, timeout: float) -> dict:
    """Run a Python snippet with the target's interpreter in its home; parse its JSON line."""
    cp = target.run([target.python, "-c", code], timeout=timeout, check=False, cwd="~")
    if cp.returncode != 0:
        err = _one_line(cp.stderr)
        if cp.returncode == 127 or "not found" in err:
            raise _Result(FAIL, f"python `{target.python}` was not found on {_on(target)}",
                          _bootstrap(target))
        raise _Result(FAIL, f"python on {_on(target)} failed: {err or f'exit {cp.returncode}'}", _bootstrap(target))
    try:
        return json.loads(cp.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise _Result(FAIL, f"unexpected output from python on {_on(target)}: {_one_line(cp.stdout)[:80]!r}",
                      "a shell startup file on the host may print to stdout; make it quiet") from None


def _on(target: Target) -> str:
    return "this machine" if target.is_local else target.name


def _bootstrap(target: Target) -> str:
    return "pip install -e . in this project" if target.is_local else \
        f"run `mlconnect bootstrap --host {target.name}`"


# ---- the checks ---------------------------------------------------------------------------------

def check_ssh(target: Target) -> Check:
    t0 = time.monotonic()
    if shutil.which("ssh") is None:
        raise _Result(FAIL, "the OpenSSH client (ssh) is not installed on this machine",
                      "install it (macOS and Windows 10+ ship it; Ubuntu: `sudo apt-get install -y openssh-client`)")
    argv = target.ssh_argv()
    dest = target.name
    try:
        cp = subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True, timeout=5,
                            stdin=subprocess.DEVNULL)
        g = dict(ln.split(" ", 1) for ln in cp.stdout.splitlines() if " " in ln)
        dest = f"{g.get('user', '?')}@{g.get('hostname', '?')}:{g.get('port', '?')}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    target.run(["true"], timeout=15, cwd="~")  # BatchMode=yes: only a key can log in
    return Check("ssh", PASS, f"key login to {dest} ok, host key known ({time.monotonic() - t0:.1f} s)")


PY_VERSIONS = (
    "import json, sys\n"
    "try:\n    import mlconnect; m = mlconnect.__version__\nexcept Exception:\n    m = None\n"
    "print(json.dumps({'python': sys.version.split()[0], 'mlconnect': m}))"
)


def check_versions(target: Target) -> Check:
    here_py = sys.version.split()[0]
    if target.is_local:
        return Check("versions", PASS, f"python {here_py}, mlconnect {__version__} (this machine)")
    d = _py(target, PY_VERSIONS, 20)
    there_py, there_m = d.get("python", "?"), d.get("mlconnect")
    if there_m is None:
        raise _Result(FAIL, f"mlconnect is not installed for {target.python} on {target.name}", _bootstrap(target))
    if there_m != __version__:
        raise _Result(FAIL, f"mlconnect {__version__} here but {there_m} on {target.name}", _bootstrap(target))
    if here_py.split(".")[:2] != there_py.split(".")[:2]:
        raise _Result(WARN, f"python {here_py} here but {there_py} on {target.name}; mlconnect {there_m} on both",
                      "use the same Python minor version on both sides (pickled checkpoints, pinned wheels)")
    return Check("versions", PASS, f"python {there_py} and mlconnect {there_m} on both sides")


def check_rsync(target: Target) -> Check:
    here = shutil.which("rsync")
    if not here:
        raise _Result(FAIL, "rsync is not installed on this machine",
                      "install it (macOS: `brew install rsync`; Ubuntu: `sudo apt-get install -y rsync`)")
    if target.is_local:
        return Check("rsync", PASS, f"rsync at {here}")
    cp = target.run(["rsync", "--version"], timeout=10, check=False, cwd="~")
    if cp.returncode != 0:
        raise _Result(FAIL, f"rsync is not installed on {target.name}",
                      f"on {target.name}: `sudo apt-get install -y rsync`")
    ver = (cp.stdout.splitlines() or ["?"])[0].replace("rsync  version", "rsync").split("protocol")[0].strip()
    return Check("rsync", PASS, f"here {here}; on {target.name}: {ver}")


def check_gpu(target: Target) -> Check:
    status, detail, fix = gpu_verdict(_py(target, PY_TORCH, 25), _on(target))
    if status != PASS:
        raise _Result(status, detail, fix or _bootstrap(target))
    return Check("gpu", PASS, detail)


def check_nvidia_smi(target: Target) -> Check:
    d = _py(target, PY_NVIDIA_SMI, 15)
    if not d.get("path"):
        raise _Result(WARN, f"nvidia-smi not found on {_on(target)} (PATH or /usr/lib/wsl/lib): no NVIDIA driver",
                      "on WSL2 install the NVIDIA driver on Windows, not inside WSL; then `wsl --shutdown`")
    if d.get("rc") != 0:
        raise _Result(FAIL, f"{d['path']} fails: {_one_line(d.get('err', ''))[:160]}",
                      "update the NVIDIA driver (on Windows for WSL2) and run `wsl --update`, then `wsl --shutdown`")
    first = (d.get("out") or "").splitlines()[0] if d.get("out") else "?"
    if not d.get("on_path"):
        raise _Result(WARN, f"{d['path']} works ({first}) but is not on PATH",
                      "add `export PATH=\"$PATH:/usr/lib/wsl/lib\"` to ~/.bashrc on the host")
    return Check("nvidia-smi", PASS, f"{d['path']}: {first}")


def check_wsl(target: Target) -> list[Check]:
    """On a WSL2 host: what keeps the distro (and sshd, and runs) up; no rows anywhere else."""
    source = Path(wsl.__file__).read_text(encoding="utf-8")  # std-lib only: runs before bootstrap too
    return [Check(**row) for row in wsl.findings(_py(target, source, 20))]


def _py_disk(path: str) -> str:
    return (
        "import json, os, shutil\n"
        f"p = os.path.expanduser({path!r}); exists = os.path.isdir(p)\n"
        "q = p\n"
        "while not os.path.exists(q) and os.path.dirname(q) != q: q = os.path.dirname(q)\n"
        "u = shutil.disk_usage(q)\n"
        "print(json.dumps({'path': p, 'exists': exists, 'free': u.free, 'total': u.total}))"
    )


def check_disk(target: Target) -> Check:
    d = _py(target, _py_disk(target.remote_root), 15)
    free = d["free"] / 2**30
    where = f"{d['path']} on {_on(target)}"
    if free < 1:
        raise _Result(FAIL, f"{free:.1f} GiB free at {where}", "free disk space (old checkpoints: `mlconnect ls`)")
    if free < 10:
        raise _Result(WARN, f"only {free:.1f} GiB free at {where}", "free disk space before long runs")
    if not d["exists"]:
        raise _Result(WARN, f"{d['path']} does not exist yet on {_on(target)} ({free:.0f} GiB free there)",
                      f"run `mlconnect sync --host {target.name}`")
    return Check("disk", PASS, f"{free:.0f} GiB free of {d['total'] / 2**30:.0f} GiB at {where}")


def _git(argv: list[str], cwd: Path) -> str | None:
    try:
        cp = subprocess.run(["git", *argv], cwd=cwd, capture_output=True, text=True, timeout=10,
                            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cp.stdout.strip() if cp.returncode == 0 else None


def check_git(target: Target, root: Path) -> Check:
    head = _git(["rev-parse", "HEAD"], root)
    if head is None:
        return Check("git", PASS, f"{root} is not a git repository here: nothing to compare")
    dirty = bool(_git(["status", "--porcelain", "--untracked-files=no"], root))
    here = f"{head[:10]}{' + uncommitted changes' if dirty else ''}"
    cp = target.run(["git", "-C", target.remote_root, "rev-parse", "HEAD"], timeout=10, check=False, cwd="~")
    there = cp.stdout.strip() if cp.returncode == 0 else None
    if there is None:
        if dirty:
            raise _Result(WARN, f"here {here}; the host copy (from mlconnect sync) has no commit to compare",
                          "commit before training so each run can be traced to a commit")
        return Check("git", PASS, f"here {here} (clean); the host copy comes from mlconnect sync")
    st = target.run(["git", "-C", target.remote_root, "status", "--porcelain", "--untracked-files=no"],
                    timeout=10, check=False, cwd="~")
    there_dirty = bool(st.stdout.strip())
    if there != head or dirty or there_dirty:
        mark = " + uncommitted changes" if there_dirty else ""
        raise _Result(WARN, f"here {here}; on {target.name} {there[:10]}{mark}",
                      f"commit and run `mlconnect sync --host {target.name}` (or git pull there)")
    return Check("git", PASS, f"{head[:10]} on both sides, clean")


def check_tensorboard(target: Target) -> Check:
    code = ("import json\ntry:\n    import tensorboard; v = tensorboard.__version__\n"
            "except Exception as e:\n    v = None\nprint(json.dumps({'v': v}))")
    d = _py(target, code, 20)
    if not d.get("v"):
        raise _Result(FAIL, f"tensorboard does not import on {_on(target)}", _bootstrap(target))
    return Check("tensorboard", PASS, f"tensorboard {d['v']} on {_on(target)}")


def check_ports(ports: tuple[int, ...] = TUNNEL_PORTS) -> Check:
    busy = [p for p in ports if not port_free(p, reuse_addr=True)]  # TIME_WAIT is not "busy"
    if busy:
        raise _Result(WARN, f"local port(s) {', '.join(map(str, busy))} already in use here",
                      "tunnels will pick another local port; to free one: `lsof -nP -iTCP:"
                      f"{busy[0]} -sTCP:LISTEN`")
    return Check("ports", PASS, f"local ports {', '.join(map(str, ports))} free for tunnels")


PY_MKTEMP = "import json, tempfile; print(json.dumps({'d': tempfile.mkdtemp(prefix='mlconnect-doctor-')}))"


def check_smoke(target: Target) -> Check:
    tmp = _py(target, PY_MKTEMP, 15)["d"]
    try:
        synth = [target.python, "-m", "mlconnect", "data", "synth", "--out", tmp, "--name", "smoke", "--users", "50",
                 "--items", "30", "--interactions", "1500"]
        cp = target.run(synth, timeout=60, check=False, cwd=tmp)
        if cp.returncode != 0:
            raise _Result(FAIL, f"synthetic data failed on {_on(target)}: {_one_line(cp.stderr)[:160]}",
                          f"run by hand there: {shlex.join(synth)}")
        # A plain name: the run lands in <tmp>/experiments/exp (cwd), the only place a name may reach.
        train = [target.python, "-m", "mlconnect", "train", "--data-path", tmp, "--dataset", "smoke", "--experiment",
                 "smoke_exp", "--set", "epochs=1", "--set", "hidden_size=16"]
        t0 = time.monotonic()
        cp = target.run(train, timeout=SMOKE_TIMEOUT_S - 30, check=False, cwd=tmp)
        took = time.monotonic() - t0
        if cp.returncode != 0:
            raise _Result(FAIL, f"one-epoch training failed on {_on(target)}: {_one_line(cp.stderr)[:160]}",
                          f"run by hand there: {shlex.join(train)}")
        best = next((ln.strip() for ln in cp.stdout.splitlines() if ln.strip().startswith("best epoch")), "")
        return Check("smoke", PASS,
                     f"1 epoch on a tiny synthetic dataset in {took:.1f} s" + (f": {best}" if best else ""))
    finally:
        cleanup = f"import shutil; shutil.rmtree({tmp!r}, ignore_errors=True)"
        with contextlib.suppress(MlconnectError):
            target.run([target.python, "-c", cleanup], timeout=15, check=False, cwd="~")


# ---- running them -------------------------------------------------------------------------------

def _timed(name: str, fn: Callable[[], Check | list[Check]]) -> Check | list[Check]:
    t0 = time.monotonic()
    try:
        c = fn()
        if isinstance(c, list):  # several rows (wsl): each keeps its own name
            for row in c:
                row.seconds = time.monotonic() - t0
            return c
    except _Result as r:
        c = Check(name, r.status, r.detail, r.fix)
    except MlconnectError as exc:
        c = Check(name, FAIL, exc.message, exc.hint)
    except Exception as exc:  # a bug in one check must not hide the others
        c = Check(name, FAIL, f"the check itself crashed: {type(exc).__name__}: {exc}",
                  "rerun with MLCONNECT_DEBUG=1 and report it")
    c.name = name
    c.seconds = time.monotonic() - t0
    return c


def run_doctor(host: str | None = None, *, ssh_config: str | None = None, smoke: bool = False) -> DoctorReport:
    t0 = time.monotonic()
    settings = load_settings(overrides={"ssh_config": ssh_config})
    target = resolve_target(host, ssh_config=ssh_config, settings=settings)
    report = DoctorReport(where=("this machine" if target.is_local else target.name))

    remote_ok = True
    if not target.is_local:
        c = _timed("ssh", lambda: check_ssh(target))
        report.checks.append(c)
        remote_ok = c.status != FAIL

    jobs: list[tuple[str, Callable[[], Check | list[Check]], float]] = []
    host_checks = [("versions", lambda: check_versions(target), 22.0),
                   ("rsync", lambda: check_rsync(target), 12.0),
                   ("gpu", lambda: check_gpu(target), 27.0),
                   ("nvidia-smi", lambda: check_nvidia_smi(target), 17.0),
                   ("disk", lambda: check_disk(target), 17.0),
                   ("wsl", lambda: check_wsl(target), 22.0)]
    if not target.is_local:
        host_checks.append(("git", lambda: check_git(target, settings.root), 22.0))
    host_checks.append(("tensorboard", lambda: check_tensorboard(target), 22.0))
    if smoke:
        host_checks.append(("smoke", lambda: check_smoke(target), SMOKE_TIMEOUT_S))
    for name, fn, limit in host_checks:
        if remote_ok:
            jobs.append((name, fn, limit))
        elif name != "wsl":  # unknown whether it is WSL at all: no row
            report.checks.append(Check(name, WARN, "not checked: SSH failed", "fix the ssh check first"))
    jobs.append(("ports", check_ports, 5.0))

    pool = ThreadPoolExecutor(max_workers=max(1, len(jobs)), thread_name_prefix="doctor")
    futures = [(name, limit, pool.submit(_timed, name, fn)) for name, fn, limit in jobs]
    for name, limit, fut in futures:
        budget = SMOKE_TIMEOUT_S if name == "smoke" else DEADLINE_S
        remaining = max(0.5, min(limit, budget - (time.monotonic() - t0)))
        try:
            got = fut.result(timeout=remaining)
            report.checks.extend(got if isinstance(got, list) else [got])
        except FutureTimeout:
            report.checks.append(Check(name, FAIL, f"did not answer within {limit:g} s",
                                       "the host may be overloaded or the connection stalled; rerun doctor"))
    pool.shutdown(wait=False, cancel_futures=True)  # a stuck check is bounded by its own subprocess timeout
    order = ["ssh", "versions", "rsync", "gpu", "nvidia-smi", "disk", "wsl", "wsl-idle", "wsl-network", "wsl-systemd",
             "wsl-keepalive", "git", "tensorboard", "ports", "smoke"]
    report.checks.sort(key=lambda c: order.index(c.name) if c.name in order else len(order))
    report.seconds = time.monotonic() - t0
    return report

