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


def worker_alive(t: Any) -> bool:
    """A RUNNING trial's worker still runs (checked on this host only; another box's answers for itself)."""
    from mlconnect.runs.launcher import process_matches

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
    again = st.requeue_interrupted(study, alive=worker_alive)
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
        for p in procs.values():  # also when only this process was signalled
            if p.poll() is None:
                p.send_signal(signum)

    def spawn(slot: int) -> subprocess.Popen:
        with open(paths.workers / f"{slot}.log", "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-X", f"mlconnect-run={run_id}", "-m", "mlconnect.sweeps.worker",
                 "--sweep-dir", str(paths.root), "--slot", str(slot)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=slot_env(slot, parallel, gpus))

    procs: dict[int, subprocess.Popen] = {}
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    where = f"GPUs {gpus}" if gpus else f"CPU, {slot_env(0, parallel, []).get('MLCONNECT_SWEEP_THREADS')} threads each"
    log_line(paths, f"sweep {spec['name']}: {spec['trials']} trials, {parallel} worker(s) on "
                    f"{socket.gethostname()} ({where})")
    procs.update({slot: spawn(slot) for slot in range(parallel)})
    restarts = dict.fromkeys(procs, 0)
    while procs:
        time.sleep(0.2)
        for slot, p in list(procs.items()):
            rc = p.poll()
            if rc is None:
                continue
            del procs[slot]
            if rc != 0 and not stopping and restarts[slot] < MAX_RESTARTS:
                st.requeue_interrupted(study, alive=worker_alive)
                restarts[slot] += 1
                log_line(paths, f"worker {slot} exited with {rc}; starting it again")
                procs[slot] = spawn(slot)
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
