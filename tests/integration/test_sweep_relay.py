"""The ``--hosts`` relay without ssh: a real worker-side process whose stdin/stdout carry its study
to a real controller-side Server and journal file (what ssh carries between two boxes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import optuna
import pytest

from mlconnect.sweeps import study as st
from mlconnect.sweeps.relay import SSH_OPTIONS, Server, worker_argv

pytestmark = pytest.mark.timeout(60)  # a lock left held would hang, not fail

CHILD = textwrap.dedent("""
    import json, sys
    import optuna
    from mlconnect.sweeps.relay import RelayBackend
    stops = []
    print("Welcome to box b!", flush=True)  # a chatty shell startup file: ignored, not answered
    relay = RelayBackend(sys.stdin.buffer, sys.stdout.buffer, lambda: stops.append(1))
    spec = relay.call("spec")
    storage = optuna.storages.JournalStorage(relay)
    study = optuna.load_study(study_name=spec["name"], storage=storage)
    with relay.ask_lock():
        trial = study.ask()
    trial.set_user_attr("box", "b")
    trial.report(0.5, 1)
    study.tell(trial, 0.75)
    relay.log("trial done on b")
    try:
        relay.call("no-such-op")
    except RuntimeError as exc:
        relay.log(f"refused: {exc}")
    relay.log("waiting")
    relay.log(f"stop arrived: {relay.stopped.wait(30)}, callback ran: {stops == [1]}")
    relay.call("lock")  # and exit while holding it: the controller must let it go
    sys.stdout.flush()
    import os; os._exit(0)  # as the real worker ends (its reader thread holds stdin)
""")


def test_a_remote_worker_reads_and_writes_the_study_and_its_lock_through_its_pipes(tmp_path):
    paths = st.SweepPaths(tmp_path / "sweeps" / "r")
    paths.root.mkdir(parents=True)
    spec = {"name": "r", "direction": "maximize", "sampler": "random", "prune": False, "space": {}}
    st.open_study(paths, spec, create=True)
    lines: list[str] = []
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    server = Server(proc, paths.journal, paths.lock, spec, lines.append)
    deadline = time.monotonic() + 30
    while "waiting" not in lines and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()  # what `sweep stop` sends each remote worker
    assert proc.wait(60) == 0
    server.thread.join(10)
    t = st.open_study(paths, spec).get_trials()[0]  # written into the first box's journal file
    assert t.value == 0.75 and t.user_attrs["box"] == "b" and t.intermediate_values == {1: 0.5}
    assert t.state == optuna.trial.TrialState.COMPLETE
    assert "ignored output of a remote worker: b'Welcome to box b!" in lines[0]
    assert lines[1] == "trial done on b" and "unknown op 'no-such-op'" in lines[2]
    assert lines[4] == "stop arrived: True, callback ran: True"
    with st.ask_lock(paths):  # released when the worker's channel closed with the lock held
        pass


def test_the_worker_is_started_over_ssh_with_no_forward_and_its_own_connection():
    box = {"name": "b", "remote_root": "~/proj", "python": "python3", "hostname": "10.0.0.2", "user": "me"}
    argv = worker_argv(box, "s1", 1, "rid")
    assert argv[0] == "ssh" and not {"-L", "-R", "-D", "-A"} & set(argv)
    for opt in SSH_OPTIONS + ["ForwardAgent=no", "BatchMode=yes"]:
        assert opt in argv
    assert argv[-2] == "10.0.0.2" and argv[argv.index("-l"):argv.index("-l") + 2] == ["-l", "me"]
    assert "cd \"$HOME\"/proj" in argv[-1] and "mlconnect.sweeps.worker" in argv[-1]
    assert "--box b --relay" in argv[-1] and "mlconnect-run=rid" in argv[-1]
