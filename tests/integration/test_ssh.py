"""The SSH transport against a real loopback sshd: round trip, multiplexing, and each failure's one line."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from mlconnect.errors import RemoteError
from mlconnect.remote.ssh import Target, probe_master, resolve_target
from support.procs import master_pid, wait_until
from support.sshd import SshdHost, free_port, keygen


def _alive(pid: int) -> bool:
    """Running or stopped; a killed process that nobody reaped yet (zombie) counts as gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _target(h: SshdHost, cfg: Path | None = None, alias: str | None = None) -> Target:
    t = resolve_target(alias or h.alias, ssh_config=str(cfg or h.ssh_config))
    t.remote_root = str(h.dir)
    return t


def test_round_trip_and_multiplexed_repeat(sshd_host: SshdHost) -> None:
    t = _target(sshd_host)
    cp = t.run(["echo", "it's a $HOME test"])
    assert cp.stdout == "it's a $HOME test\n"  # quoting: nothing expanded by the remote shell
    assert t.run(["pwd"]).stdout.strip() == str(sshd_host.dir)
    assert probe_master(t.control_path())[0] == "ok"  # type: ignore[arg-type]
    assert wait_until(lambda: master_pid(t.control_path()), 5)  # type: ignore[arg-type]
    pid = master_pid(t.control_path())  # type: ignore[arg-type]
    t2 = _target(sshd_host)
    assert t2.run(["echo", "again"]).stdout == "again\n"
    assert master_pid(t2.control_path()) == pid  # type: ignore[arg-type]  # same master reused


def test_failing_command_carries_rc_and_stderr(sshd_host: SshdHost) -> None:
    t = _target(sshd_host)
    with pytest.raises(RemoteError) as ei:
        t.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert ei.value.returncode == 3 and "boom" in ei.value.stderr_tail
    assert t.run(["sh", "-c", "exit 3"], check=False).returncode == 3
    with pytest.raises(RemoteError, match="not installed"):
        t.run(["no-such-tool-xyz"])


def test_unreachable_port_is_clear_and_fast(sshd_host: SshdHost, tmp_path: Path) -> None:
    cfg = sshd_host.write_client_config(tmp_path / "cfg", alias="nowhere", port=free_port())
    t = _target(sshd_host, cfg, "nowhere")
    start = time.monotonic()
    with pytest.raises(RemoteError, match="cannot reach nowhere") as ei:
        t.run(["true"])
    assert time.monotonic() - start < 10
    assert "sshd listens" in str(ei.value)


def test_wrong_key_is_an_authentication_error(sshd_host: SshdHost, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A master is keyed by (host, port, user) only (%C): keep the good session's master out of it.
    monkeypatch.setenv("MLCONNECT_CONTROL_DIR", str(tmp_path / "cm"))
    keygen(tmp_path / "other")
    cfg = sshd_host.write_client_config(tmp_path / "cfg", alias="wrongkey", identity=tmp_path / "other")
    with pytest.raises(RemoteError, match="authentication to wrongkey .* failed"):
        _target(sshd_host, cfg, "wrongkey").run(["true"])


def test_changed_host_key_aborts(sshd_host: SshdHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCONNECT_CONTROL_DIR", str(tmp_path / "cm"))
    known = tmp_path / "known_hosts"
    keygen(tmp_path / "fake")
    fake = (tmp_path / "fake.pub").read_text().split()[:2]
    known.write_text(f"[127.0.0.1]:{sshd_host.port} {fake[0]} {fake[1]}\n")
    cfg = tmp_path / "cfg"
    sshd_host.write_client_config(cfg, alias="changed")
    cfg.write_text(cfg.read_text().replace(str(sshd_host.known_hosts), str(known)))
    with pytest.raises(RemoteError, match="host key of changed .* has changed"):
        _target(sshd_host, cfg, "changed").run(["true"])


def test_wedged_master_is_bounded_and_recovers(sshd_host: SshdHost) -> None:
    t = _target(sshd_host)
    t.run(["true"])
    assert probe_master(t.control_path())[0] == "ok"  # type: ignore[arg-type]
    assert wait_until(lambda: master_pid(t.control_path()), 5)  # type: ignore[arg-type]
    pid = master_pid(t.control_path())  # type: ignore[arg-type]
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t2 = _target(sshd_host)
        start = time.monotonic()
        assert t2.run(["echo", "recovered"], timeout=10).stdout == "recovered\n"
        assert time.monotonic() - start < 10
        assert _target(sshd_host).run(["echo", "next"], timeout=10).stdout == "next\n"
        assert probe_master(t2.control_path())[0] in ("ok", "none")  # type: ignore[arg-type]  # not wedged
    finally:
        with contextlib.suppress(ProcessLookupError):
            if _alive(pid):  # normally evicted already; never leave a stopped ssh behind
                os.kill(pid, signal.SIGKILL)
