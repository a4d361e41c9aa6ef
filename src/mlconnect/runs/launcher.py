"""Detached runs: start, supervise, record, stop, resume, queue — the host side of ``--detach``.

Replaces ``nohup python train.py | tee training.log`` + ``pkill -f``. The shape:

* :func:`start_run` writes ``status.json`` and spawns a *supervisor* in a new session (stdin
  /dev/null, output to files, no fd of the ssh channel), so the run survives the ssh session,
  the laptop's sleep and SIGHUP. It returns as soon as the supervisor has recorded the child.
* The supervisor (``python -m mlconnect.runs.launcher supervise ...``) waits for its turn when
  queued, starts the child in its own process group (a training run: the engine's entry point on
  the run's spec, ``python -m mlconnect.engine.run <exp>/run_spec.json``, never the CLI), heartbeats
  into ``status.json``, samples the GPU into ``gpu_usage.csv`` and records the exit code and final state.
* The child carries a run-id marker on its command line (``python -X mlconnect-run=<id> ...``:
  CPython keeps unknown ``-X`` options, so the marker costs the trainer nothing). Every signal
  and every "is it running?" answer checks that marker against the live process's command line,
  so a pid reused by an unrelated process is never taken for the run, nor killed.
* The boot id is recorded, so a run cut off by a reboot reads as ``lost``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from mlconnect.engine.runspec import SPEC_FILE, RunSpec
from mlconnect.errors import ExperimentError
from mlconnect.expstate import ACTIVE, boot_id, now_iso, parse_iso, process_matches, state_of
from mlconnect.fileio import atomic_write_bytes, atomic_write_json, locked, read_json, read_json_object
from mlconnect.layout import ExperimentPaths
from mlconnect.runs.gpu import GpuSampler
from mlconnect.runs.gpu_queue import gpu_slots, open_gpu_lock, queue_dir, take_free_gpu
from mlconnect.runs.procs import terminate

RESUMABLE = ("stopped", "lost", "failed")
MARKER = "mlconnect-run="
HEARTBEAT_S = float(os.environ.get("MLCONNECT_HEARTBEAT_S", "5"))
GPU_INTERVAL_S = float(os.environ.get("MLCONNECT_GPU_INTERVAL_S", "5"))
QUEUE_POLL_S = 1.0


# ---------------------------------------------------------------------------------------- status


def read_status(paths: ExperimentPaths) -> dict | None:
    return read_json_object(paths.status)


@contextlib.contextmanager
def _status_lock(paths: ExperimentPaths):
    # The supervisor and `stop` both update status.json: serialise read-modify-write.
    paths.root.mkdir(parents=True, exist_ok=True)
    with locked(paths.root / ".status.lock"):
        yield


def update_status(paths: ExperimentPaths, **changes: Any) -> dict:
    """Atomically merge ``changes`` into status.json and return the new document."""
    with _status_lock(paths):
        st = read_json_object(paths.status) or {}
        st.update(changes)
        atomic_write_json(paths.status, st)
        return st


def reconcile(paths: ExperimentPaths, status: dict | None = None) -> dict | None:
    """status.json as it really is: an active run whose processes are gone is recorded ``lost``.

    The judgement is :func:`mlconnect.expstate.state_of`'s (the one every command uses); this
    only writes it down, under the lock, unless the supervisor finished while we looked.
    """
    st = status if status is not None else read_status(paths)
    if not st or st.get("state") not in ACTIVE:
        return st
    verdict = state_of(st, None, None)
    if verdict["state"] != "lost":
        return st
    with _status_lock(paths):
        fresh = read_json_object(paths.status) or {}
        if fresh.get("run_id") != st.get("run_id") or fresh.get("state") not in ACTIVE:
            return fresh
        if _trainer_finished(paths, fresh):  # only the supervisor died (OOM killer, kill -9): the run finished
            fresh.update(state="succeeded", supervisor_lost=verdict["reason"], ended=fresh.get("ended") or now_iso())
        else:
            fresh.update(state="lost", lost_reason=verdict["reason"], ended=fresh.get("ended") or now_iso())
        atomic_write_json(paths.status, fresh)
        return fresh


def is_active(paths: ExperimentPaths) -> bool:
    st = reconcile(paths)
    return bool(st and st.get("state") in ACTIVE)


# ----------------------------------------------------------------------------------------- start


def train_argv(spec_file: str | os.PathLike[str], *, run_id: str, python: str | None = None) -> list[str]:
    """The engine's entry point on a run spec, carrying the run-id marker (never the CLI again)."""
    return [python or sys.executable, "-X", f"{MARKER}{run_id}", "-m", "mlconnect.engine.run", str(spec_file)]


def start_training(paths: ExperimentPaths, spec: RunSpec) -> dict:
    """Write ``spec`` into the experiment folder and start the engine on it, supervised."""
    if is_active(paths):  # before the spec of the live run is overwritten
        _refuse_active(paths)
    spec_file = (paths.root / SPEC_FILE).resolve()
    atomic_write_bytes(spec_file, (spec.to_json() + "\n").encode())
    run_id = new_run_id()
    return start_run(paths, train_argv(spec_file, run_id=run_id), run_id=run_id, queue=spec.queue,
                     env=dict(spec.env), described=f"mlconnect train {spec.as_train_options()}")


def _refuse_active(paths: ExperimentPaths) -> None:
    st = read_status(paths) or {}
    raise ExperimentError(
        f"experiment {paths.name} is already {st.get('state')} (pid {st.get('pid')})",
        f"follow it with `mlconnect logs {paths.name} -f`, or `mlconnect stop {paths.name}` first")


def start_run(paths: ExperimentPaths, argv: list[str], *, run_id: str, queue: bool = False,
              cwd: str | os.PathLike[str] | None = None, wait_s: float = 10.0,
              env: dict[str, str] | None = None, described: str | None = None) -> dict:
    """Record the run and spawn its supervisor detached; return the status once it is recorded.

    ``argv`` must carry ``run_id`` (see :func:`train_argv`; sweeps and jobs bring their own entry
    point); ``described`` is what the log's starting line adds for people. Refuses when the
    experiment already has a live run: one folder, one writer.
    """
    if is_active(paths):
        _refuse_active(paths)
    cwd = str(Path(cwd or os.getcwd()).resolve())
    with _status_lock(paths):
        atomic_write_json(paths.status, {
            "run_id": run_id, "pid": None, "pgid": None, "supervisor_pid": None,
            "state": "queued", "queue": queue, "exit_code": None, "created": now_iso(),
            "started": None, "ended": None, "heartbeat": now_iso(), "boot_id": boot_id(),
            "host": socket.gethostname(), "cwd": cwd, "command": list(argv), "env": env or {},
            "described": described})
    sup_log = open(paths.root / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        sup = subprocess.Popen(
            [sys.executable, "-m", "mlconnect.runs.launcher", "supervise",
             "--experiment-dir", str(paths.root.resolve()), "--run-id", run_id],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=sup_log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    finally:
        sup_log.close()
    update_status(paths, supervisor_pid=sup.pid)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        st = read_status(paths) or {}
        if st.get("pid") or st.get("state") not in ACTIVE or (queue and st.get("waiting")):
            return st
        if sup.poll() is not None:  # died before recording anything: say why
            break
        time.sleep(0.02)
    st = reconcile(paths) or {}
    if st.get("state") not in ACTIVE or sup.poll() is not None:
        tail = _tail(paths.root / "supervisor.log")
        raise ExperimentError(f"the run supervisor for {paths.name} exited at once: {tail}",
                              f"see {paths.root / 'supervisor.log'}")
    return st


def _tail(path: Path, n: int = 1) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no output)"
    return " | ".join(lines[-n:]) or "(no output)"


# ------------------------------------------------------------------------------------ supervisor


class _Cancelled(Exception):
    pass


def _wait_for_turn(paths: ExperimentPaths, run_id: str, slots: list[int]) -> tuple[int | None, Any]:
    """FIFO: wait until this run heads the host queue *and* no other run holds the GPU lock.

    Queued runs take the lock exclusively; plain detached runs hold it shared, so a queued run
    also waits for them. Dead waiters (supervisor gone) are dropped from the queue. Sleeps
    between checks: no busy loop.
    """
    qdir = queue_dir()
    ticket = qdir / f"{time.time_ns():020d}-{run_id}.json"
    atomic_write_json(ticket, {"pid": os.getpid(), "run_id": run_id, "experiment": str(paths.root)})
    update_status(paths, waiting=True, queue_ticket=ticket.name)
    last_beat = 0.0
    try:
        while True:
            head = None
            for entry in sorted(qdir.glob("*.json")):
                info = read_json(entry) or {}
                if process_matches(info.get("pid"), info.get("run_id")):
                    head = entry
                    break
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()  # a waiter that died: never let it block the queue
            if head == ticket:
                taken = take_free_gpu(slots)  # hook: GPU-aware queue
                if taken is not None:
                    return taken
            if time.monotonic() - last_beat > HEARTBEAT_S:
                update_status(paths, heartbeat=now_iso())
                last_beat = time.monotonic()
            time.sleep(QUEUE_POLL_S)
    finally:
        with contextlib.suppress(FileNotFoundError):
            ticket.unlink()


def _own_group() -> dict:
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}  # 3.10: same effect, before exec


def _final_state(rc: int, stop_requested: bool, paths: ExperimentPaths) -> str:
    if rc == 0:
        return "succeeded"
    progress = read_json_object(paths.progress) or {}
    # 143/130: the trainer caught SIGTERM/SIGINT and saved; negative: killed by that signal.
    if stop_requested or rc in (130, 143, -signal.SIGTERM, -signal.SIGINT) \
            or progress.get("state") == "stopped":
        return "stopped"
    return "failed"


def supervise(exp_dir: str, run_id: str) -> int:
    """Body of the supervisor process: queue, start the child, heartbeat, record the end."""
    paths = ExperimentPaths(Path(exp_dir))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # belt and braces: we have no terminal anyway
    st = read_status(paths) or {}
    if st.get("run_id") != run_id:
        print(f"status.json belongs to run {st.get('run_id')}, not {run_id}", file=sys.stderr)
        return 2
    child: subprocess.Popen | None = None

    def on_term(signum: int, _frame: Any) -> None:
        if child is None:
            raise _Cancelled()
        # Someone signalled the supervisor instead of the run: pass it on, keep recording.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    slots = gpu_slots()  # hook: GPU-aware queue
    gpu, locks = None, []
    try:
        if st.get("queue"):
            gpu, lock = _wait_for_turn(paths, run_id, slots)
            locks.append(lock)
        else:
            for slot in slots or [None]:
                locks.append(open_gpu_lock(slot))
                with contextlib.suppress(BlockingIOError):  # a queued run holds it: we still start
                    fcntl.flock(locks[-1], fcntl.LOCK_SH | fcntl.LOCK_NB)
    except _Cancelled:
        update_status(paths, state="stopped", waiting=False, ended=now_iso(), exit_code=None,
                      note="cancelled while queued")
        return 0
    # Lines reach the log as they are printed; the laptop's MLCONNECT_* settings for this run.
    env = {**os.environ, **(st.get("env") or {}), "PYTHONUNBUFFERED": "1"}
    if gpu is not None and len(slots) > 1:  # GPU-aware queue: the run sees only its GPU
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    # Output goes to training.log in append mode, next to the lines the trainer writes itself.
    with open(paths.log, "ab", buffering=0) as log:
        what = f" ({st['described']})" if st.get("described") else ""  # the run in a person's words
        log.write(f"[mlconnect] run {run_id} starting: {' '.join(st['command'])}{what}\n".encode())
        child = subprocess.Popen(st["command"], cwd=st.get("cwd"), stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=subprocess.STDOUT, env=env, close_fds=True,
                                 **_own_group())  # own group: `stop` signals the run, not us
    update_status(paths, state="running", waiting=False, pid=child.pid, pgid=child.pid,
                  started=now_iso(), heartbeat=now_iso(),
                  gpu_index=gpu if gpu is not None and len(slots) > 1 else None)  # hook: GPU-aware queue
    sampler = GpuSampler(paths.gpu_usage, GPU_INTERVAL_S)
    next_beat = time.monotonic() + HEARTBEAT_S
    while True:
        if sampler.due():
            sampler.sample()
            if sampler.unavailable:
                update_status(paths, gpu=None, gpu_note=sampler.unavailable)
        timeout = max(0.05, min(next_beat, sampler._next if sampler.unavailable is None
                                else next_beat) - time.monotonic())
        try:
            rc = child.wait(timeout=timeout)
            break
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= next_beat:
            update_status(paths, heartbeat=now_iso())
            next_beat = time.monotonic() + HEARTBEAT_S
    cur = read_status(paths) or {}
    state = _final_state(rc, bool(cur.get("stop_requested")), paths)
    with open(paths.log, "ab") as log:
        log.write(f"[mlconnect] run {run_id} exited with code {rc}: {state}\n".encode())
    update_status(paths, state=state, exit_code=rc, ended=now_iso(), heartbeat=now_iso())
    return 0


# ------------------------------------------------------------------------------------ stop/resume


def stop_run(paths: ExperimentPaths, grace_s: float = 30.0) -> dict:
    """SIGTERM the run's process group (the trainer checkpoints), SIGKILL after ``grace_s``."""
    st = reconcile(paths)
    if not st:
        raise ExperimentError(f"experiment {paths.name} has no run on this host",
                              "see `mlconnect ps` for the runs there are")
    if st.get("state") == "running" and _trainer_finished(paths, st):
        # The trainer wrote its results and is only exiting: a SIGTERM now would turn a
        # finished run into "stopped, exit -15". Wait for the supervisor's record instead.
        st = _await_final(paths, st["run_id"], 30.0)
    if st.get("state") not in ACTIVE:
        hint = (f"`mlconnect resume {paths.name}` starts it again" if st.get("state") in RESUMABLE
                else f"it has finished: `mlconnect pull {paths.name}` fetches its results")
        raise ExperimentError(f"experiment {paths.name} is not running (state: {st.get('state')})", hint)
    run_id = st["run_id"]
    update_status(paths, stop_requested=True, stop_requested_at=now_iso())
    sup = st.get("supervisor_pid")
    if st.get("state") == "queued" or not st.get("pid"):
        if process_matches(sup, run_id):
            os.kill(int(sup), signal.SIGTERM)  # the supervisor cancels its queue ticket
        return _await_final(paths, run_id, 10.0)
    pid = int(st["pid"])
    killed = terminate(pid, int(st.get("pgid") or pid), run_id, grace_s) == "killed"
    final = _await_final(paths, run_id, 10.0)
    if killed:
        final = update_status(paths, killed_after_grace_s=grace_s)
    return final


def _trainer_finished(paths: ExperimentPaths, st: dict) -> bool:
    progress = read_json_object(paths.progress) or {}
    updated, started = parse_iso(progress.get("updated")), parse_iso(st.get("started"))
    return progress.get("state") == "finished" and bool(updated and started and updated >= started)


def _await_final(paths: ExperimentPaths, run_id: str, timeout: float) -> dict:
    """Wait for the supervisor's final record; if it is gone, write ``stopped`` ourselves."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = read_status(paths) or {}
        if st.get("run_id") != run_id or st.get("state") not in ACTIVE:
            return st
        if not process_matches(st.get("supervisor_pid"), run_id) and \
                not process_matches(st.get("pid"), run_id):
            break
        time.sleep(0.05)
    return update_status(paths, state="stopped", ended=now_iso(), note="stopped without supervisor")


def new_run_id() -> str:
    return uuid.uuid4().hex


# ------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m mlconnect.runs.launcher")
    sub = p.add_subparsers(dest="verb", required=True)
    s = sub.add_parser("supervise", help="(internal) supervise one detached run")
    s.add_argument("--experiment-dir", required=True)
    s.add_argument("--run-id", required=True)
    args = p.parse_args(argv)
    try:
        return supervise(args.experiment_dir, args.run_id)
    except Exception as exc:  # the only record the user gets: put it in status.json too
        with contextlib.suppress(Exception):
            update_status(ExperimentPaths(Path(args.experiment_dir)), state="failed",
                          ended=now_iso(), note=f"supervisor error: {exc!r}")
        raise


if __name__ == "__main__":
    sys.exit(main())

