"""Failures no retry can fix are one line naming the cause, at once (real sshd, real rsync): `sync`, `logs -f`.

A wrong key, a changed host key, a read-only remote_root: rsync's own last line ("error in rsync
protocol data stream (code 12)") and a "check the connection" hint told the user nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.sshd import SshdHost, keygen


@pytest.fixture
def cm() -> Iterator[Path]:
    """A control dir of this test's own, short enough to be used (a long one falls back to a shared
    one, where a good key's master would let a wrong key in); its masters are ended afterwards."""
    from mlconnect.remote.master import is_our_ssh, socket_holders

    d = Path(tempfile.mkdtemp(prefix="mlc-se-", dir="/tmp"))
    yield d
    for sock in d.glob("*"):
        for pid in socket_holders(str(sock)):
            if is_our_ssh(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
    shutil.rmtree(d, ignore_errors=True)


def _sync(tmp: Path, h: SshdHost, cfg: Path, alias: str, remote_root: Path,
          args: tuple[str, ...] = ("sync",), *, cm: Path) -> subprocess.CompletedProcess[str]:
    proj = tmp / "proj"
    proj.mkdir(exist_ok=True)
    (proj / "train.py").write_text("print('hi')\n")
    (proj / "mlconnect.toml").write_text(f'[hosts.{alias}]\nremote_root = "{remote_root}"\n')
    env = {**os.environ, "MLCONNECT_SSH_CONFIG": str(cfg), "MLCONNECT_CONTROL_DIR": str(cm)}
    return subprocess.run([sys.executable, "-m", "mlconnect", *args, "--host", alias], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=30)


def _one_line(cp: subprocess.CompletedProcess[str]) -> str:
    assert cp.returncode != 0, cp.stdout
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], cp.stderr
    assert "Traceback" not in cp.stderr and "check the connection" not in lines[0]
    return lines[0]


def test_wrong_key_is_named_and_not_retried(sshd_host: SshdHost, tmp_path: Path, cm: Path) -> None:
    keygen(tmp_path / "other")
    cfg = sshd_host.write_client_config(tmp_path / "cfg", alias="wk", identity=tmp_path / "other")
    start = time.monotonic()
    line = _one_line(_sync(tmp_path, sshd_host, cfg, "wk", tmp_path / "root", cm=cm))
    assert time.monotonic() - start < 5  # no 1+2+4 s of retries for a key that will not change
    assert "authentication to wk" in line and f"ssh -F {cfg} wk true" in line


def test_changed_host_key_is_named(sshd_host: SshdHost, tmp_path: Path, cm: Path) -> None:
    keygen(tmp_path / "fake")
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd_host.port} {' '.join((tmp_path / 'fake.pub').read_text().split()[:2])}\n")
    cfg = sshd_host.write_client_config(tmp_path / "cfg", alias="hk")
    cfg.write_text(cfg.read_text().replace(str(sshd_host.known_hosts), str(known)))
    line = _one_line(_sync(tmp_path, sshd_host, cfg, "hk", tmp_path / "root", cm=cm))
    assert "host key of hk" in line and "ssh-keygen -R" in line


@contextlib.contextmanager
def _unwritable(folder: Path):
    """A folder nobody here may write in: a read-only tmpfs as root (chmod does not stop root), else 0555."""
    folder.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(folder)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("root without CAP_SYS_ADMIN: no way to make a folder unwritable")
    else:
        folder.chmod(0o555)
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        folder.chmod(0o755)


def test_unwritable_remote_root_says_so(sshd_host: SshdHost, tmp_path: Path, cm: Path) -> None:
    with _unwritable(tmp_path / "ro"):
        line = _one_line(_sync(tmp_path, sshd_host, sshd_host.ssh_config, sshd_host.alias, tmp_path / "ro" / "root",
                               cm=cm))
    assert ("read-only" in line or "no permission" in line) and "remote_root in mlconnect.toml" in line, line


def test_logs_follow_does_not_retry_a_wrong_key_forever(sshd_host: SshdHost, tmp_path: Path, cm: Path) -> None:
    # `logs -f` waits out a dropped connection, but a refused key never heals: it used to print
    # "lost the connection ... retrying in 15s" forever.
    keygen(tmp_path / "other")
    cfg = sshd_host.write_client_config(tmp_path / "cfg", alias="wk", identity=tmp_path / "other")
    start = time.monotonic()
    line = _one_line(_sync(tmp_path, sshd_host, cfg, "wk", tmp_path / "root", ("logs", "r1", "-f"), cm=cm))
    assert time.monotonic() - start < 10 and "authentication to wk" in line
