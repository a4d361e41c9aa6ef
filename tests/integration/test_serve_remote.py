"""`mlconnect serve NAME --host H` for real: uvicorn on a loopback sshd "host", reached through the tunnel.

The host is this machine reached through the session's real OpenSSH server (``sshd_host``), with
``remote_root`` a temp folder and the same interpreter; its experiment comes from a tiny real
training. Answers are checked against the engine's own ``Recommender``; the host-side server is
found by pid (its cwd is the host project and its argv is serving's entry point) to check that it
listens on 127.0.0.1 only and is gone after Ctrl-C / SIGTERM. Nothing is mocked and no traffic
leaves loopback; every process a test starts is ended by it or by the module fixture, by pid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import torch
from runs_support import wait_for, write_tiny_dataset

from mlconnect.engine.inference import Recommender
from mlconnect.remote.ssh import resolve_target
from support.cli import ForegroundCli, cli_env
from support.procs import gone, listen_addresses
from support.sshd import SshdHost, free_port

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[2]
KEY = "remote-serve-key-0123456789"

torch.set_num_threads(1)  # two cores shared by everyone's tests


# ------------------------------------------------------------------------------------------ helpers


def host_servers(remote: Path) -> list[int]:
    """Pids of serving's entry point (``python -m mlconnect.serving.lifecycle``) running in the host project
    (what serve --host starts there: never the CLI again)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (d / "cmdline").read_bytes().split(b"\0")
            if b"mlconnect.serving.lifecycle" in argv and os.readlink(d / "cwd") == str(remote) \
                    and not gone(int(d.name)):
                found.append(int(d.name))
    return found


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def Serve(box: SimpleNamespace, *args: str, env: dict[str, str] | None = None) -> ForegroundCli:  # noqa: N802
    """`mlconnect serve NAME --host H ...` in its own session (so a group signal is a terminal's Ctrl-C)."""
    return ForegroundCli(["serve", *args, *box.host], box.laptop, env or cli_env(), new_session=True)


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def box(sshd_host: SshdHost, tmp_path_factory: pytest.TempPathFactory):
    from mlconnect.engine.config import load_config
    from mlconnect.engine.trainer import train

    tmp = tmp_path_factory.mktemp("serve_remote")
    laptop, remote = tmp / "laptop", tmp / "remote_root"
    laptop.mkdir()
    data = write_tiny_dataset(tmp / "data")
    cfg = load_config(REPO / "configs" / "baseline.yaml",
                      {"data_path": str(data), "dataset": "tiny", "epochs": 1, "hidden_size": 16,
                       "inner_size": 32, "n_layers": 1, "num_threads": 1, "seed": 3, "train_batch_size": 256})
    train(cfg, remote / "experiments" / "s1")  # a second or two: 50 users, 20 items
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd_host.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    host = ["--host", sshd_host.alias, "--ssh-config", str(sshd_host.ssh_config)]
    yield SimpleNamespace(laptop=laptop, remote=remote, host=host, alias=sshd_host.alias)
    for pid in host_servers(remote):  # whatever a failed test left running on the "host", by pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    resolve_target(sshd_host.alias, ssh_config=str(sshd_host.ssh_config)).close_master()


@pytest.fixture(scope="module")
def rec(box) -> Recommender:
    return Recommender.load(box.remote / "experiments" / "s1")


def one_host_server(box) -> tuple[int, int]:
    """The host-side server's pid and the one port it listens on."""
    pids = wait_for(lambda: host_servers(box.remote), 10, what="the host-side server process")
    assert len(pids) == 1, pids
    addrs = listen_addresses(pids[:1])
    assert len(addrs) == 1 and next(iter(addrs))[0] == "127.0.0.1", addrs  # never 0.0.0.0 nor ::
    return pids[0], next(iter(addrs))[1]


# ------------------------------------------------------------------------------------------ tests


def test_answers_equal_the_engine_and_ctrl_c_stops_the_host_side(box, rec: Recommender) -> None:
    port = free_port()
    srv = Serve(box, "s1", "--port", str(port))
    try:
        assert srv.first_line(90) == f"http://127.0.0.1:{port}"
        pid, remote_port = one_host_server(box)
        err = srv.stderr()
        assert f"serving s1 from {box.alias} (pid {pid}, 127.0.0.1:{remote_port} there)" in err, err
        assert "busy" not in err
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as c:
            assert c.get("/health").json()["status"] == "ok"
            for user, k in (("u3", 5), ("u17", 10)):
                items = rec.user_history(user)[:12]
                r = c.post("/recommend", json={"items": items, "k": k})
                assert r.status_code == 200, r.text
                got = [s["item_id"] for s in r.json()["items"]]
                want = rec.recommend([items], k=k)[0]
                assert got == [i for i, _ in want] and len(got) == k
                assert [s["score"] for s in r.json()["items"]] == pytest.approx([s for _, s in want], abs=1e-5)
            r = c.post("/recommend", json={"user_id": "u8", "k": 3})
            assert [s["item_id"] for s in r.json()["items"]] == \
                [i for i, _ in rec.recommend([rec.user_history("u8")], k=3)[0]]
            assert c.get("/model").json()["experiment"] == "s1"
    finally:
        rc = srv.stop(signal.SIGINT)  # `kill -INT` on the client alone
    err = srv.stderr()
    assert rc == 0, err
    assert f"stopping the server on {box.alias}" in err
    assert "Application shutdown complete" in err and "Traceback" not in err, err  # graceful, on the host
    wait_for(lambda: gone(pid), 5, what=f"the host-side server (pid {pid}) to exit")
    assert not answers(port)  # the tunnel is closed too
    assert host_servers(box.remote) == []


def test_busy_port_moves_on_key_stays_off_argv_and_sigterm_stops_both(box) -> None:
    busy_port = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", busy_port))
    busy.listen()
    srv = Serve(box, "s1", "--port", str(busy_port), "--api-key-env", "SERVE_KEY",
                env=cli_env(SERVE_KEY=KEY))
    try:
        url = srv.first_line(90)
        local = int(url.rsplit(":", 1)[1])
        assert url == f"http://127.0.0.1:{local}" and local > busy_port
        assert f"port {busy_port} is busy here; using {local}" in srv.stderr()
        assert f"on http://127.0.0.1:{local};" in srv.stderr()
        pid, _ = one_host_server(box)
        assert KEY.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()  # on stdin, never on argv
        with httpx.Client(base_url=url, timeout=30, trust_env=False) as c:
            assert c.post("/recommend", json={"user_id": "u1"}).status_code == 401
            r = c.post("/recommend", json={"user_id": "u1", "k": 4}, headers={"X-API-Key": KEY})
            assert r.status_code == 200 and len(r.json()["items"]) == 4, r.text
    finally:
        rc = srv.stop(signal.SIGTERM)
        busy.close()
    err = srv.stderr()
    assert rc == 0 and "Application shutdown complete" in err, err
    assert KEY not in err
    wait_for(lambda: gone(pid), 5, what=f"the host-side server (pid {pid}) to exit")
    assert not answers(local)


def test_terminal_ctrl_c_to_the_whole_process_group(box) -> None:
    """A terminal's Ctrl-C signals every process in the foreground group, ssh children included."""
    port = free_port()
    srv = Serve(box, "s1", "--port", str(port))
    try:
        assert srv.first_line(90) == f"http://127.0.0.1:{port}"
        pid, _ = one_host_server(box)
        assert httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False, timeout=10).status_code == 200
    finally:
        rc = srv.stop(signal.SIGINT, group=True)
    assert rc == 0, srv.stderr()
    wait_for(lambda: gone(pid), 5, what=f"the host-side server (pid {pid}) to exit")
    assert not answers(port)


def test_unknown_experiment_on_the_host_is_one_error_line(box) -> None:
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "mlconnect", "serve", "nope", "--port", str(free_port()), *box.host],
                        cwd=box.laptop, env=cli_env(), text=True, capture_output=True, timeout=60,
                        stdin=subprocess.DEVNULL)
    assert time.monotonic() - t0 < 30
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert cp.returncode == 1 and len(lines) == 1, cp.stderr
    assert lines[0].startswith("error: no experiment 'nope'") and f"(on {box.alias})" in lines[0], lines[0]
    assert " — " in lines[0] and cp.stdout == ""
    assert host_servers(box.remote) == []
