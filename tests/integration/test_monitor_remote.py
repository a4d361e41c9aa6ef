"""`mlconnect monitor NAME --host H` for real: detached trainings on a loopback sshd "host".

The host is this machine reached through the session's real OpenSSH server (``sshd_host``), with
``remote_root`` a temp folder and the same interpreter; runs are started with ``mlconnect train
--host`` (detached, as people do) on a tiny dataset. Dropped connections are real: the monitor's
ssh clients (the multiplexing master included) are SIGKILLed, by pid, for a few seconds while it
runs; the sshd itself keeps running. Nothing is mocked and no traffic leaves loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from runs_sshd import ssh_client_pids
from runs_support import cli_env, mlc, read_json, wait_for, write_project, write_tiny_dataset

from support.sshd import SshdHost

pytestmark = pytest.mark.timeout(150)


def ssh_clients(box: SimpleNamespace) -> list[int]:
    """Pids of this module's ssh clients (its own ssh config file and control dir)."""
    return ssh_client_pids(box.ssh_config, str(box.control_dir))


def ssh_children(pid: int) -> set[int]:
    """Pids of the ssh processes ``pid`` has started for remote reads (not ``ssh -G``), live right now."""
    found = set()
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid \
                    and (d / "comm").read_text().strip() == "ssh" \
                    and b"-G" not in (d / "cmdline").read_bytes().split(b"\0"):
                found.add(int(d.name))
    return found


def state_of(box: SimpleNamespace, name: str) -> str | None:
    return (read_json(box.remote / "experiments" / name / "status.json") or {}).get("state")


def epoch_of(box: SimpleNamespace, name: str) -> int:
    return (read_json(box.remote / "experiments" / name / "progress.json") or {}).get("epoch") or 0


def train(box: SimpleNamespace, name: str, epochs: int) -> None:
    out = mlc(["train", *box.host, "--config", "configs/tiny.yaml", "--experiment", name,
               "--set", f"epochs={epochs}", "--set", "stopping_step=1000"], box.laptop, box.env).stdout
    assert f"{name}: running on {box.alias}" in out, out


@pytest.fixture(scope="module")
def box(sshd_host: SshdHost, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("monitor_remote")
    laptop, remote = tmp / "laptop", tmp / "remote_root"
    laptop.mkdir()
    write_project(laptop, write_tiny_dataset(tmp / "hostdata"))
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd_host.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    # Our own ssh config file and control dir, so that a "dropped connection" kills only our clients.
    ssh_config = sshd_host.write_client_config(tmp / "ssh_config")
    control_dir = tempfile.mkdtemp(prefix="mlc-mon-", dir="/tmp")  # short: unix socket paths are limited
    env = cli_env(tmp)
    env["MLCONNECT_CONTROL_DIR"] = control_dir
    env["MLCONNECT_HOST"] = ""
    b = SimpleNamespace(laptop=laptop, remote=remote, env=env, alias=sshd_host.alias, ssh_config=ssh_config,
                        control_dir=control_dir, host=["--host", sshd_host.alias, "--ssh-config", str(ssh_config)])
    yield b
    for d in (remote / "experiments").iterdir() if (remote / "experiments").is_dir() else []:
        if state_of(b, d.name) in ("running", "starting"):  # a failed test's run: stop it by its record
            mlc(["stop", d.name, *b.host], laptop, env, check=False)
    for pid in ssh_clients(b):  # the ControlPersist master outlives commands: end ours
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    shutil.rmtree(control_dir, ignore_errors=True)


def test_once_and_json_on_a_finished_run(box) -> None:
    train(box, "m1", 2)
    wait_for(lambda: state_of(box, "m1") == "succeeded", timeout=90, what="m1 to finish")
    out = mlc(["monitor", "m1", *box.host, "--once"], box.laptop, box.env).stdout
    assert "mlconnect monitor · m1" in out and "succeeded" in out and "2/2" in out, out
    assert "exited with code 0: succeeded" in out  # the log tail, read on the host
    v = json.loads(mlc(["monitor", "m1", *box.host, "--once", "--json"], box.laptop, box.env).stdout)
    assert v["state"] == "succeeded" and v["state_source"] == "status.json"
    assert v["epoch"] == 2 and v["epochs"] == 2 and v["model"] == "SASRec" and v["dataset"] == "tiny"
    assert v["path"] == str(box.remote / "experiments" / "m1") and v["exit_code"] == 0
    assert v["test"]["ndcg@10"] == read_json(box.remote / "experiments" / "m1" / "results" / "metrics.json")[
        "test"]["ndcg@10"]
    cp = mlc(["monitor", "nope", *box.host, "--once"], box.laptop, box.env, check=False)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 1 and len(lines) == 1, cp.stderr
    assert lines[0].startswith(f"error: unknown experiment 'nope' on {box.alias}"), lines[0]


def test_running_run_once_then_live_loop_survives_dropped_connections(box, tmp_path: Path) -> None:
    epochs = 60  # ~0.4 s each here: long enough for the checks and a 3 s outage while it runs
    train(box, "m2", epochs)
    wait_for(lambda: epoch_of(box, "m2") >= 1, timeout=90, what="m2's first epoch")
    before = epoch_of(box, "m2")
    v = json.loads(mlc(["monitor", "m2", *box.host, "--once", "--json"], box.laptop, box.env).stdout)
    after = epoch_of(box, "m2")
    assert v["state"] == "running" and v["state_source"] == "status.json"
    assert before <= v["epoch"] <= after < epochs and v["epochs"] == epochs, (before, v["epoch"], after)
    out = mlc(["monitor", "m2", *box.host, "--once"], box.laptop, box.env).stdout
    assert "running" in out and f"/{epochs}" in out, out

    log = tmp_path / "monitor.out"
    with open(log, "w") as f:
        mon = subprocess.Popen([sys.executable, "-m", "mlconnect", "monitor", "m2", *box.host, "--interval", "0.5"],
                               cwd=box.laptop, env=box.env, stdout=f, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    try:
        # In its loop once later reads have dialled the host (the first one, before the loop, must
        # succeed: a host unreachable from the start is an error, not something to wait for). Wait for
        # three ssh children, not two: one CI run saw the outage hit the first read, so a read can
        # count twice here (e.g. the client that becomes the ControlPersist master).
        seen: set[int] = set()

        def second_read() -> bool:
            seen.update(ssh_children(mon.pid))
            return mon.poll() is not None or len(seen) >= 3

        wait_for(second_read, timeout=30, interval=0.02, what="the monitor's second read")
        assert mon.poll() is None, log.read_text()
        killed, end = 0, time.monotonic() + 3
        while time.monotonic() < end:  # every new connection dies too: an outage, not one hiccup
            for pid in ssh_clients(box):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.02)
        assert killed >= 1
        assert state_of(box, "m2") == "running" and epoch_of(box, "m2") < epochs  # the run went on
        rc = mon.wait(timeout=100)
    finally:
        if mon.poll() is None:
            mon.kill()
            mon.wait(5)
    text = log.read_text()
    assert rc == 0, text
    assert "reconnecting" in text, text
    assert "reconnected" in text[text.index("reconnecting"):], text  # and then it continued
    summary = text[text.rindex("summary"):]
    assert "m2 succeeded" in summary and f"{epochs}/{epochs}" in summary, text
    assert "Traceback" not in text and "╯╭" not in text  # the summary starts on a line of its own
