"""Launcher mechanics with real detached processes: FIFO queue, SIGKILL after grace, killed runs.

The children here are small Python scripts (not trainings) because what is under test is the
process handling: they are still real processes in their own sessions, signalled for real.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from mlconnect.errors import ExperimentError
from mlconnect.layout import ExperimentPaths
from mlconnect.runs import launcher, store

CHILD = """
import signal, sys, time
mode, seconds, stamp = sys.argv[1], float(sys.argv[2]), sys.argv[3]
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
open(stamp, "a").write(f"start {time.time()}\\n")
time.sleep(seconds)
open(stamp, "a").write(f"end {time.time()}\\n")
print("done", flush=True)
"""


@pytest.fixture
def proj(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLCONNECT_QUEUE_DIR", str(tmp_path / "queue"))
    monkeypatch.setenv("MLCONNECT_HEARTBEAT_S", "0.5")
    (tmp_path / "child.py").write_text(CHILD)
    return tmp_path


def _start(proj: Path, name: str, seconds: float, *, queue: bool = False, mode: str = "polite"):
    paths = ExperimentPaths(proj / "experiments" / name)
    paths.root.mkdir(parents=True, exist_ok=True)
    rid = launcher.new_run_id()
    argv = [sys.executable, "-X", f"mlconnect-run={rid}", str(proj / "child.py"), mode, str(seconds),
            str(paths.root / "stamps")]
    return paths, launcher.start_run(paths, argv, run_id=rid, queue=queue)


def _wait_state(paths: ExperimentPaths, states: tuple[str, ...], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = launcher.reconcile(paths) or {}
        if st.get("state") in states:
            return st
        time.sleep(0.1)
    raise AssertionError(f"{paths.name} never reached {states}: {launcher.read_status(paths)}")


def _stamps(paths: ExperimentPaths) -> dict[str, float]:
    lines = (paths.root / "stamps").read_text().splitlines()
    return {k: float(v) for k, v in (line.split() for line in lines)}


def test_queue_runs_one_at_a_time_in_order(proj):
    a, st_a = _start(proj, "a", 1.5, queue=True)
    b, st_b = _start(proj, "b", 0.5, queue=True)
    c, st_c = _start(proj, "c", 0.5, queue=True)
    assert st_b["state"] == "queued" and st_c["state"] == "queued"
    states = {r["name"]: r["state"] for r in store.list_experiments(proj)}
    assert states == {"a": "running", "b": "queued", "c": "queued"}
    with pytest.raises(ExperimentError, match="already queued"):
        _start(proj, "b", 0.5)
    for p in (a, b, c):
        assert _wait_state(p, ("succeeded", "failed"))["state"] == "succeeded"
    sa, sb, sc = _stamps(a), _stamps(b), _stamps(c)
    assert sa["end"] <= sb["start"] and sb["end"] <= sc["start"]  # FIFO, never two at once
    assert list((proj / "queue").glob("*.json")) == []  # tickets cleaned up


def test_queued_run_waits_for_a_plain_run_and_can_be_cancelled(proj):
    plain, _ = _start(proj, "plain", 2.0)
    q1, _ = _start(proj, "q1", 0.2, queue=True)
    q2, _ = _start(proj, "q2", 0.2, queue=True)
    time.sleep(0.5)
    assert (launcher.read_status(q1) or {})["state"] == "queued"
    st = launcher.stop_run(q1)  # cancel while waiting: no process was ever started
    assert st["state"] == "stopped" and st.get("pid") is None
    assert _wait_state(plain, ("succeeded",))
    assert _wait_state(q2, ("succeeded",))
    assert _stamps(q2)["start"] >= _stamps(plain)["end"]
    assert not (q1.root / "stamps").exists()


def test_stop_escalates_to_sigkill_after_grace(proj):
    paths, st = _start(proj, "stubborn", 60, mode="stubborn")
    time.sleep(0.3)
    t0 = time.monotonic()
    final = launcher.stop_run(paths, grace_s=1.0)
    assert time.monotonic() - t0 < 10
    assert final["state"] == "stopped" and final["exit_code"] == -signal.SIGKILL
    assert final["killed_after_grace_s"] == 1.0
    assert not launcher.process_matches(st["pid"], st["run_id"])


def test_run_killed_from_outside_is_failed_and_dead_supervisor_is_lost(proj):
    paths, st = _start(proj, "killed", 60)
    os.kill(st["pid"], signal.SIGKILL)  # e.g. the OOM killer
    final = _wait_state(paths, ("failed",))
    assert final["exit_code"] == -signal.SIGKILL
    paths2, st2 = _start(proj, "orphan", 60)
    os.kill(st2["supervisor_pid"], signal.SIGKILL)  # supervisor gone: nobody will record the end
    os.killpg(st2["pgid"], signal.SIGKILL)
    time.sleep(0.3)
    row = store.experiment_row(paths2)
    assert row["state"] == "lost"
    with pytest.raises(ExperimentError, match="not running"):
        launcher.stop_run(paths2)
