"""An experiment folder as it is: one reading of its files and the one rule for its state.

Every command that says what a run is doing (``ps``, ``ls``, ``monitor``, ``compare``,
``status``, ``stop``) asks :func:`state_of`, so they all use the same words: ``queued``,
``running``, ``succeeded``, ``failed``, ``stopped``, ``lost`` (its processes are gone without a
final record: killed, or the host rebooted), ``created`` (config only) and ``empty``.

This module is deliberately **standard library only and self-contained** (no mlconnect imports):
the host agent's ``snapshot`` verb (``monitor --host``) and every ``ps`` import it on each call, so
one ssh round trip per refresh returns every file the dashboard needs, with the state decided on
the host (where the pids can be checked), at the cost of the interpreter's start-up only. It also
owns the time format (:func:`now_iso`, :func:`parse_iso`) and the process checks (pid + run
marker, boot id) that the launcher, the services and the trainer use.

:func:`snapshot` returns ``{"experiment", "path", "exists", "read_at", "progress", "status",
"results", "gpu", "log_tail", "problems", "state"}``. A file that is missing reads as ``None``;
a file that cannot be parsed reads as ``None`` *and* adds a line to ``problems`` (the caller
decides whether that is an error or a transient hiccup worth a warning).
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import subprocess
from datetime import datetime, timezone

ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "stopped", "lost")
# progress.json (written by the trainer) says "finished"; every command says "succeeded".
_PROGRESS_WORDS = {"finished": "succeeded"}
LAUNCH_GRACE_S = 30.0  # a run being launched has no supervisor pid for a moment


# ----------------------------------------------------------------------------------------- time


def now_iso() -> str:
    """The one timestamp format in every file mlconnect writes: UTC, seconds, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_iso(text: object) -> datetime | None:
    """:func:`now_iso` back to an aware datetime; naive times read as UTC, junk as None."""
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def age_s(text: object) -> float:
    """Seconds since an ISO time (infinity when there is none)."""
    t = parse_iso(text)
    return float("inf") if t is None else (datetime.now(timezone.utc) - t).total_seconds()


# ------------------------------------------------------------------------------------ processes


def boot_id() -> str | None:
    """Linux's per-boot uuid; on macOS the boot time (both change exactly when the box reboots)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["sysctl", "-n", "kern.boottime"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (a zombie too); another user's process counts as existing."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_cmdline(pid: int) -> str | None:
    """The live command line of ``pid`` (None if there is no such process or it is a zombie)."""
    if pid <= 0:
        return None
    if os.path.exists("/proc/self/cmdline"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip() or None
    try:  # macOS / BSD: no /proc
        out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def process_matches(pid: object, marker: object) -> bool:
    """True only when ``pid`` is alive *and* its command line carries ``marker`` (a run id or
    a service marker), so a pid reused by an unrelated process is never taken for ours."""
    if not pid or not marker:
        return False
    try:
        cmd = process_cmdline(int(pid))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return cmd is not None and str(marker) in cmd


def process_start(pid: int) -> str | None:
    """When ``pid`` started (Linux: clock ticks since boot), to tell it from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict:
    """Who writes progress.json: enough for any later reader to tell whether it is still alive."""
    pid = os.getpid()
    return {"pid": pid, "pid_start": process_start(pid), "host": socket.gethostname(),
            "boot_id": boot_id()}


def _writer_gone(doc: dict) -> str | None:
    """Why the process that wrote ``doc`` (progress.json) is gone, or None if alive / unknown."""
    if doc.get("host") != socket.gethostname() or not doc.get("pid"):
        return None  # a copy pulled from another machine: its processes cannot be checked here
    if doc.get("boot_id") not in (None, boot_id()):
        return "host rebooted"
    pid = int(doc["pid"])
    if process_cmdline(pid) is None:
        return f"process {pid} is gone (killed?) without a final record"
    start = doc.get("pid_start")
    if start is not None and process_start(pid) not in (None, start):
        return f"process {pid} is gone (its pid now belongs to another process)"
    return None


def _run_gone(status: dict) -> str | None:
    """Why an active detached run (status.json) is gone, or None while it is alive."""
    if status.get("host") not in (None, socket.gethostname()):
        return None  # pulled from another machine: its processes cannot be checked here
    if status.get("host") is None and not (status.get("pid") or status.get("supervisor_pid")):
        return None  # a hand-made record naming no process: nothing to check
    run_id = status.get("run_id")
    if not status.get("supervisor_pid") and age_s(status.get("created")) < LAUNCH_GRACE_S:
        return None  # being launched right now: the supervisor's pid is a moment away
    if status.get("boot_id") not in (None, boot_id()):
        return "host rebooted"
    if process_matches(status.get("pid"), run_id) or process_matches(status.get("supervisor_pid"), run_id):
        return None
    return "processes gone without a final record"


# ---------------------------------------------------------------------------------------- state


def state_of(status: dict | None, progress: dict | None, results: dict | None,
             has_config: bool = False) -> dict:
    """The one answer to "what is this run doing": ``{"state", "source", "reason"}``.

    status.json first (the runs layer knows about exits and reboots), unless a foreground run
    started after it ended; then progress.json, whose writer's pid is checked; then results.
    An active state whose processes are gone on this machine reads ``lost``, never running.
    """
    status, progress = status or {}, progress or {}
    st, pst = status.get("state"), progress.get("state")
    if st:
        ended, updated = parse_iso(status.get("ended")), parse_iso(progress.get("updated"))
        rerun = st not in ACTIVE and pst == "running" and ended and updated and updated > ended
        if not rerun:
            if st in ACTIVE:
                reason = _run_gone(status)
                if reason:
                    return {"state": "lost", "source": "status.json", "reason": reason}
            return {"state": st, "source": "status.json", "reason": status.get("lost_reason")}
    if pst:
        if pst == "running":
            reason = _writer_gone(progress)
            if reason:
                return {"state": "lost", "source": "progress.json", "reason": reason}
        return {"state": _PROGRESS_WORDS.get(pst, pst), "source": "progress.json",
                "reason": progress.get("error")}
    if results:
        return {"state": "succeeded", "source": "results/metrics.json", "reason": None}
    return {"state": "created" if has_config else "empty", "source": "folder", "reason": None}


# ------------------------------------------------------------------------------------- snapshot


LOG_TAIL_BYTES = 16384
GPU_TAIL_BYTES = 8192


def _read_json(path: str, problems: list[str]) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.append(f"{os.path.basename(path)}: cannot read ({exc.strerror or exc})")
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        # Writers replace these files atomically, so a bad one is corrupt or cut short by a copy.
        problems.append(f"{os.path.basename(path)}: not valid JSON ({exc.msg} at line {exc.lineno}), "
                        f"{len(text)} bytes — corrupt or half-copied")
        return None
    if not isinstance(doc, dict):
        problems.append(f"{os.path.basename(path)}: expected a JSON object, found {type(doc).__name__}")
        return None
    return doc


def _tail_text(path: str, max_bytes: int) -> str | None:
    """The last ``max_bytes`` of a file (the first, possibly cut, line dropped), None if missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return None
    text = data.decode("utf-8", "replace")
    if size > max_bytes and "\n" in text:
        text = text.split("\n", 1)[1]
    return text


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_gpu(path: str, problems: list[str]) -> dict | None:
    """The newest sample of every GPU in ``gpu_usage.csv``: ``{"timestamp", "gpus": [...], "note"}``.

    ``None`` when the file does not exist. A sampler that found no GPU writes one row whose
    ``name`` starts with ``no GPU:`` and an empty ``gpu`` column; that becomes ``note``.
    """
    text = _tail_text(path, GPU_TAIL_BYTES)
    if text is None:
        return None
    header = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = next(csv.reader([f.readline()]), None)
    except OSError:
        pass
    if not header or "timestamp" not in header:
        problems.append("gpu_usage.csv: no header row")
        return {"timestamp": None, "gpus": [], "note": None}
    rows = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) != len(header) or row[0] == "timestamp":
            continue  # a partly appended last row, or the header itself
        rows.append(dict(zip(header, row)))
    note = None
    gpus = []
    newest = None
    for r in rows:
        if not r.get("gpu", "").strip():
            note = r.get("name") or "no GPU"
    sampled = [r for r in rows if r.get("gpu", "").strip()]
    if sampled:
        newest = sampled[-1]["timestamp"]
        for r in sampled:
            if r["timestamp"] != newest:
                continue
            gpus.append({"gpu": r.get("gpu"), "name": r.get("name"),
                         **{k: _num(r.get(k, "")) for k in header[3:]}})
        note = None  # a real sample beats an old "no GPU" line
    return {"timestamp": newest, "gpus": gpus, "note": note}


def snapshot(exp_dir: str, log_lines: int = 12) -> dict:
    """Read every file the dashboard shows; never raises for a missing or malformed file."""
    problems: list[str] = []
    exp_dir = os.path.abspath(exp_dir)
    j = os.path.join
    log = _tail_text(j(exp_dir, "training.log"), LOG_TAIL_BYTES)
    progress = _read_json(j(exp_dir, "progress.json"), problems)
    status = _read_json(j(exp_dir, "status.json"), problems)
    results = _read_json(j(exp_dir, "results", "metrics.json"), problems)
    has_config = os.path.isfile(j(exp_dir, "config.yaml"))
    return {
        "experiment": os.path.basename(exp_dir.rstrip("/")),
        "path": exp_dir,
        "exists": os.path.isdir(exp_dir),
        "has_config": has_config,
        "read_at": now_iso(),
        "progress": progress,
        "status": status,
        "results": results,
        "gpu": read_gpu(j(exp_dir, "gpu_usage.csv"), problems),
        "log_tail": None if log is None else log.splitlines()[-log_lines:],
        "problems": problems,
        "state": state_of(status, progress, results, has_config),
    }

