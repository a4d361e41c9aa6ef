"""`mlconnect tensorboard` / `jupyter` for real: TensorBoard on a loopback sshd "host", through the tunnel.

The host is this machine reached through the session's real OpenSSH server (``sshd_host``), with
``remote_root`` a temp folder and the same interpreter. TensorBoard is real and reads event files a
real ``SummaryWriter`` wrote; the checks go through TensorBoard's own HTTP API. Every process a test
starts is ended by it or by the module fixture (services by their recorded pid, never by name).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from runs_support import wait_for

from mlconnect.ports import port_listening
from mlconnect.remote.ssh import resolve_target
from mlconnect.runs import services
from support.cli import ForegroundCli, cli_env
from support.procs import children, comm, gone, group_members, listen_addresses, wait_until
from support.sshd import SshdHost, free_port

pytestmark = pytest.mark.timeout(240)

TAGS = {"train/loss", "valid/ndcg@10"}


# ------------------------------------------------------------------------------------------ helpers


def write_events(logdir: Path) -> None:
    """A few scalars, as the trainer writes them (torch's SummaryWriter)."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(logdir))
    for step in range(3):
        w.add_scalar("train/loss", 1.0 / (step + 1), step)
        w.add_scalar("valid/ndcg@10", 0.1 * (step + 1), step)
    w.close()


def mlc(args: list[str], cwd: Path, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], cwd=cwd, env=cli_env(), text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def scalar_tags(port: int) -> dict:
    return json.loads(get(f"http://127.0.0.1:{port}/data/plugin/scalars/tags")[1])


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def box(sshd_host: SshdHost, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("services")
    laptop, remote = tmp / "laptop", tmp / "remote_root"
    laptop.mkdir()
    write_events(remote / "experiments" / "exp1" / "logs")
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd_host.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    host = ["--host", sshd_host.alias, "--ssh-config", str(sshd_host.ssh_config)]
    yield SimpleNamespace(laptop=laptop, remote=remote, host=host, alias=sshd_host.alias)
    for s in services.SERVICES:  # whatever a failed test left running, by its recorded pid
        services.stop_service(remote, s, grace_s=5)
    resolve_target(sshd_host.alias, ssh_config=str(sshd_host.ssh_config)).close_master()


@pytest.fixture
def local_project(tmp_path: Path):
    write_events(tmp_path / "experiments" / "exp1" / "logs")
    yield tmp_path
    for s in services.SERVICES:
        services.stop_service(tmp_path, s, grace_s=5)


# ------------------------------------------------------------------------------------------ tests


def test_tensorboard_through_the_tunnel_reuse_restart_stop(box) -> None:
    busy_port = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", busy_port))
    busy.listen()
    fg = ForegroundCli(["tensorboard", *box.host, "--port", str(busy_port)], box.laptop)
    try:
        url = fg.first_line()
        assert url.startswith("http://localhost:") and url.endswith("/"), url
        local = int(url.rsplit(":", 1)[1].strip("/"))
        assert local > busy_port
        assert f"port {busy_port} is busy here; using {local}" in fg.stderr()

        status, body = get(f"http://127.0.0.1:{local}/")
        assert status == 200 and b"<html" in body.lower()
        tags = wait_for(lambda: scalar_tags(local).get("exp1/logs"), what="the run's scalars in TensorBoard")
        assert set(tags) >= TAGS, tags
        _, body = get(f"http://127.0.0.1:{local}/data/plugin/scalars/scalars?run=exp1/logs&tag=train/loss")
        assert [round(p[2], 4) for p in json.loads(body)] == [1.0, 0.5, 0.3333]  # [wall_time, step, value]

        rec = services.read_record(box.remote, "tensorboard")
        assert rec and rec["logdir"] == str((box.remote / "experiments").resolve())
        pid, remote_port = rec["pid"], rec["port"]
        addrs = listen_addresses(group_members(rec["pgid"]))
        assert ("127.0.0.1", remote_port) in addrs
        assert all(a in ("127.0.0.1", "::1") for a, _ in addrs), addrs  # never 0.0.0.0 nor ::
        assert oct(services.record_path(box.remote, "tensorboard").stat().st_mode & 0o777) == "0o600"
    finally:
        assert fg.stop() == 0
        busy.close()
    # Ctrl-C closed the tunnel, not the service
    assert not gone(pid)
    with pytest.raises(OSError):
        get(f"http://127.0.0.1:{local}/", timeout=2)

    # a second call reuses the same process; SIGTERM (not only Ctrl-C) takes its ssh -N and port along
    fg = ForegroundCli(["tensorboard", *box.host, "--port", str(free_port()), "--json"], box.laptop)
    try:
        again = json.loads(fg.first_line())
        assert again["reused"] is True and again["pid"] == pid and again["remote_port"] == remote_port
        assert get(again["url"].replace("localhost", "127.0.0.1"))[0] == 200
        assert "already running" in fg.stderr()
        (ssh_pid,) = [c for c in children(fg.proc.pid) if comm(c) == "ssh"]
    finally:
        assert fg.stop(signal.SIGTERM) == 0
    assert wait_until(lambda: gone(ssh_pid), 10)
    assert wait_until(lambda: not port_listening(again["local_port"]), 5)
    assert not gone(pid)  # the service on the box keeps running

    st = mlc(["status", *box.host, "--json"], box.laptop)
    assert st.returncode == 0, st.stderr
    listed = json.loads(st.stdout)["services"]
    assert [(s["service"], s["pid"], s["port"]) for s in listed] == [("tensorboard", pid, remote_port)]
    assert "token" not in listed[0]

    # one experiment instead of all of them: the running one is restarted on that folder
    one = mlc(["tensorboard", "exp1", *box.host, "--no-tunnel", "--json"], box.laptop)
    assert one.returncode == 0, one.stderr
    res = json.loads(one.stdout)
    assert res["reused"] is False and res["pid"] != pid and res["url"] is None
    assert res["logdir"] == str((box.remote / "experiments" / "exp1").resolve())
    assert gone(pid)
    assert f"mlconnect tunnel --port {res['remote_port']} --host {box.alias}" in one.stderr

    stop = mlc(["tensorboard", "--stop", *box.host], box.laptop)
    assert stop.returncode == 0, stop.stderr
    assert f"stopped tensorboard (pid {res['pid']}) on {box.alias}" in stop.stderr
    assert gone(res["pid"])
    assert not services.record_path(box.remote, "tensorboard").exists()
    again = mlc(["tensorboard", "--stop", *box.host], box.laptop)
    assert again.returncode == 0 and "no tensorboard was running" in again.stderr


def test_jupyter_without_jupyterlab_says_how_to_install_it(box) -> None:
    if importlib.util.find_spec("jupyterlab") is not None:
        pytest.skip("jupyterlab is installed here: the missing-jupyterlab path cannot happen")
    cp = mlc(["jupyter", *box.host], box.laptop)
    assert cp.returncode == 1
    err = cp.stderr.strip()
    assert "\n" not in err, err  # one line
    assert err.startswith("error: jupyterlab is not installed for ")
    assert err.endswith(f"install it there: `{sys.executable} -m pip install jupyterlab`"), err
    assert cp.stdout == ""
    assert not services.record_path(box.remote, "jupyter").exists()


def test_local_tensorboard_returns_at_once_and_moves_off_a_busy_port(local_project: Path) -> None:
    busy_port = free_port()
    busy = socket.socket()
    busy.bind(("127.0.0.1", busy_port))
    busy.listen()
    try:
        cp = mlc(["tensorboard", "exp1", "--port", str(busy_port), "--json"], local_project, timeout=90)
    finally:
        busy.close()
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)
    assert res["host"] == "this machine" and res["reused"] is False
    assert res["local_port"] == res["remote_port"] > busy_port
    assert f"port {busy_port} is busy here; using {res['local_port']}" in cp.stderr
    assert get(f"http://127.0.0.1:{res['local_port']}/")[0] == 200
    tags = wait_for(lambda: scalar_tags(res["local_port"]).get("logs"), what="the run's scalars")
    assert set(tags) >= TAGS
    assert all(a == "127.0.0.1" for a, _ in listen_addresses(group_members(res["pid"])))

    again = mlc(["tensorboard", "exp1", "--port", str(busy_port)], local_project)
    assert again.returncode == 0 and again.stdout.strip() == f"http://localhost:{res['local_port']}/"
    assert "already running" in again.stderr and "busy" not in again.stderr

    stop = mlc(["tensorboard", "--stop"], local_project)
    assert stop.returncode == 0 and f"stopped tensorboard (pid {res['pid']})" in stop.stderr
    assert gone(res["pid"])
    assert not services.record_path(local_project, "tensorboard").exists()


def test_a_stale_record_is_never_reused_nor_signalled(local_project: Path) -> None:
    logdir = str((local_project / "experiments" / "exp1").resolve())
    dead = subprocess.Popen(["true"])
    dead.wait()
    # A live process that is not ours, on a port that answers HTTP: only the marker tells them apart.
    stranger = subprocess.Popen(["sleep", "120"])
    web_port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web_port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=local_project)
    try:
        wait_for(lambda: services.answers_http(web_port), what="http.server")
        for pid, port in ((dead.pid, free_port()), (stranger.pid, web_port)):
            services.services_dir(local_project).mkdir(parents=True, exist_ok=True)
            rec = {"service": "tensorboard", "pid": pid, "pgid": pid, "port": port, "logdir": logdir,
                   "token": None, "started": "2020-01-01T00:00:00+00:00", "marker": "mlconnect-service=0bad"}
            services.record_path(local_project, "tensorboard").write_text(json.dumps(rec))
            assert services.list_services(local_project) == []

            cp = mlc(["tensorboard", "exp1", "--port", str(free_port()), "--json"], local_project, timeout=90)
            assert cp.returncode == 0, cp.stderr
            res = json.loads(cp.stdout)
            assert res["reused"] is False and res["pid"] != pid
            assert stranger.poll() is None  # never signalled
            stop = mlc(["tensorboard", "--stop"], local_project)
            assert stop.returncode == 0 and gone(res["pid"])

        # and --stop on a stale record removes it without signalling the stranger
        rec["pid"] = rec["pgid"] = stranger.pid
        services.record_path(local_project, "tensorboard").write_text(json.dumps(rec))
        stop = mlc(["tensorboard", "--stop"], local_project)
        assert stop.returncode == 0 and "no tensorboard was running" in stop.stderr
        assert stranger.poll() is None
        assert not services.record_path(local_project, "tensorboard").exists()
    finally:
        for p in (stranger, web):
            p.kill()
            p.wait(5)


def test_jupyter_argv_binds_loopback_and_keeps_the_token_off_the_command_line() -> None:
    argv = services.jupyter_argv("/usr/bin/python3", "mlconnect-service=x", "/srv/proj", 8890)
    assert argv[:5] == ["/usr/bin/python3", "-X", "mlconnect-service=x", "-m", "jupyterlab"]
    assert "--ip=127.0.0.1" in argv and "--port=8890" in argv and "--no-browser" in argv
    assert not any("token" in a.lower() for a in argv)
    tb = services.tensorboard_argv("py", "mlconnect-service=y", "/l", 6007)
    assert tb[tb.index("--host") + 1] == "127.0.0.1" and "--bind_all" not in tb


def test_a_service_that_fails_to_start_is_one_error_with_its_log_tail(tmp_path: Path) -> None:
    # The interpreter is the one argv input we vary: a stand-in that dies, then one that never answers.
    dies = tmp_path / "dies"
    dies.write_text("#!/bin/sh\necho 'starting'\necho 'ImportError: no tensorboard here' >&2\nexit 3\n")
    hangs = tmp_path / "hangs"
    hangs.write_text("#!/bin/sh\necho 'thinking'\nsleep 60\n")
    for p in (dies, hangs):
        p.chmod(0o755)
    with pytest.raises(services.ServiceError) as err:
        services.start_service(tmp_path, "tensorboard", python=str(dies), port=free_port())
    assert "tensorboard exited at once" in str(err.value)
    assert "ImportError: no tensorboard here" in str(err.value)
    assert f"see {services.log_path(tmp_path, 'tensorboard')}" in str(err.value)
    assert not services.record_path(tmp_path, "tensorboard").exists()

    t0 = time.monotonic()
    with pytest.raises(services.ServiceError) as err:
        services.start_service(tmp_path, "tensorboard", python=str(hangs), port=free_port(), wait_s=2)
    assert time.monotonic() - t0 < 15
    assert "did not answer within 2 s" in str(err.value) and "thinking" in str(err.value)
    assert not services.record_path(tmp_path, "tensorboard").exists()
    assert pids_running(str(hangs)) == []  # the hung one was ended, with its group


def pids_running(needle: str) -> list[int]:
    found = []
    for d in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if d.name.isdigit() and needle.encode() in (d / "cmdline").read_bytes() and not gone(int(d.name)):
                found.append(int(d.name))
    return found
