"""The sweep's controller: the process the run supervisor starts for ``mlconnect sweep start``.

``python -X mlconnect-run=<id> -m mlconnect.sweeps.run --sweep-dir sweeps/NAME``. It queues again
the trials a stop or a reboot interrupted, starts ``parallel`` trial workers (one GPU each through
``CUDA_VISIBLE_DEVICES``, or a share of the CPU cores each), restarts a worker that crashes, and
exits when the study has its trials (0) or when stopped (143). It lives in the run's process
group, so ``sweep stop`` (SIGTERM to the group) reaches every worker and trainer at once: each
trainer saves its checkpoint, and the trials it was running stay RUNNING for ``resume``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mlconnect.sweeps import study as st
from mlconnect.sweeps.worker import log_line
from mlconnect.sweeps.worker import run_id as marker_run_id

MAX_RESTARTS = 3  # per slot: a worker that keeps crashing is a bug, not bad luck
REDIAL_S = (2, 10, 30)  # another box's worker whose ssh ended: dial again after (a reboot takes a while)


def worker_alive(t: Any, remote: dict[str, Any] | None = None, here: str | None = None) -> bool:
    """A RUNNING trial's worker still runs. On this box: its process; on another box of ``--hosts``:
    the ssh session this controller holds to that worker (``remote``: label -> Popen)."""
    from mlconnect.runs.launcher import process_matches

    box = t.user_attrs.get("box")
    if box is not None and box != here:
        p = (remote or {}).get(f"{box}/{t.user_attrs.get('slot')}")
        return p is not None and p.poll() is None
    if t.user_attrs.get("host") not in (None, socket.gethostname()):
        return True
    return process_matches(t.user_attrs.get("worker_pid"), t.user_attrs.get("run_id"))


def slot_env(slot: int, parallel: int, gpus: list[int]) -> dict[str, str]:
    """One GPU per worker when the box has GPUs; else an even share of the cores (at least one)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])
    else:
        threads = max(1, (os.cpu_count() or 1) // max(parallel, 1))
        env["MLCONNECT_SWEEP_THREADS"] = str(threads)
        env.setdefault("OMP_NUM_THREADS", str(threads))
    return env


def box_gpus(spec: dict[str, Any]) -> list[int]:
    if spec.get("gpus") is not None:
        return list(spec["gpus"])
    from mlconnect.runs.gpu import gpu_summary

    summary = gpu_summary()
    return [int(g["gpu"]) for g in summary.get("gpus", [])] if summary.get("available") else []


def control(sweep_dir: str) -> int:
    paths = st.SweepPaths(Path(sweep_dir))
    spec = st.read_spec(paths)
    study = st.open_study(paths, spec)
    boxes = spec.get("boxes") or []  # --hosts: [this box, the others...]
    here = boxes[0]["name"] if boxes else None
    servers: dict[str, Any] = {}  # "box/slot" -> its relay (the ssh session to that worker)

    def alive(t: Any) -> bool:
        return worker_alive(t, {k: v.proc for k, v in servers.items()}, here)

    again = st.requeue_interrupted(study, alive=alive)
    if again:
        log_line(paths, f"queued again the trials interrupted earlier: {again}")
    parallel = int(spec.get("parallel", 1))
    gpus = box_gpus(spec)
    paths.workers.mkdir(exist_ok=True)
    run_id = marker_run_id() or "manual"
    stopping = False

    def on_term(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for label, p in procs.items():  # also when only this process was signalled
            if p.poll() is None and label not in servers:
                p.send_signal(signum)
        for srv in servers.values():  # the other boxes' workers stop (and checkpoint) on this message
            srv.stop()

    def spawn(label: str) -> subprocess.Popen:
        if "/" in label:
            return spawn_remote(label)
        slot = int(label)
        with open(paths.workers / f"{slot}.log", "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-X", f"mlconnect-run={run_id}", "-m", "mlconnect.sweeps.worker",
                 "--sweep-dir", str(paths.root), "--slot", str(slot), *(["--box", here] if here else [])],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=slot_env(slot, parallel, gpus))

    def spawn_remote(label: str) -> subprocess.Popen:
        from mlconnect.remote.tunnel import _pdeathsig_preexec
        from mlconnect.sweeps import relay

        name, slot = label.split("/")
        box = next(b for b in boxes if b["name"] == name)
        argv = relay.worker_argv(box, spec["name"], int(slot), run_id)
        with open(paths.workers / f"{name}-{slot}.ssh.log", "ab") as err:
            # Its own session: `sweep stop` (SIGTERM to our group) reaches it as a message, so that
            # the remote trainer checkpoints; the kernel ends it if this controller dies (PDEATHSIG).
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                 start_new_session=True, preexec_fn=_pdeathsig_preexec())
        servers[label] = relay.Server(p, paths.journal, paths.lock, spec, lambda text: log_line(paths, text))
        return p

    procs: dict[str, subprocess.Popen] = {}
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    where = f"GPUs {gpus}" if gpus else f"CPU, {slot_env(0, parallel, []).get('MLCONNECT_SWEEP_THREADS')} threads each"
    log_line(paths, f"sweep {spec['name']}: {spec['trials']} trials, {parallel} worker(s) on "
                    f"{here or socket.gethostname()} ({where})"
                    + (f" and {parallel} on each of {', '.join(b['name'] for b in boxes[1:])}" if boxes[1:] else ""))
    labels = [str(k) for k in range(parallel)] + [f"{b['name']}/{k}" for b in boxes[1:] for k in range(parallel)]
    procs.update({label: spawn(label) for label in labels})
    restarts = dict.fromkeys(procs, 0)
    retry_at: dict[str, float] = {}  # another box's worker, to be dialled again (it may be rebooting)
    while procs:
        time.sleep(0.2)
        for label, due in list(retry_at.items()):
            if stopping:
                retry_at.clear()
            elif time.monotonic() >= due:
                del retry_at[label]
                procs[label] = spawn(label)
        for label, p in list(procs.items()):
            rc = p.poll()
            if rc is None:
                continue
            del procs[label]
            if label in servers:
                servers[label].thread.join(5)  # its last answers (the trial's end) are in the journal
            if rc in (0, 143) or stopping:
                continue
            # A box that dropped out loses only its running trials: queued again for any worker.
            st.requeue_interrupted(study, alive=alive)
            if restarts[label] >= MAX_RESTARTS:
                log_line(paths, f"worker {label} exited with {rc} {MAX_RESTARTS + 1} times; the others go on")
                continue
            restarts[label] += 1
            delay = REDIAL_S[restarts[label] - 1] if label in servers else 0
            log_line(paths, f"worker {label} exited with {rc}; starting it again" + (f" in {delay} s" if delay else ""))
            if delay:  # pending only while other workers run: when they are all done, so is the study
                retry_at[label] = time.monotonic() + delay
            else:
                procs[label] = spawn(label)
    rows = st.trial_rows(study, sweep_active=True)
    best = st.best_trial(study)
    done = sum(r["state"] in ("complete", "pruned") for r in rows)
    line = f"sweep {spec['name']} {'stopped' if stopping else 'finished'}: {done}/{spec['trials']} trials done"
    if best is not None:
        line += f"; best trial {best.number}: {spec['metric']} {best.value:.4f} {best.params}"
    log_line(paths, line)
    return 143 if stopping else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlconnect.sweeps.run")
    p.add_argument("--sweep-dir", required=True)
    return control(p.parse_args(argv).sweep_dir)


if __name__ == "__main__":
    sys.exit(main())
