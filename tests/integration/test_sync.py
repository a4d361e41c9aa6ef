"""`mlconnect sync` against a real loopback sshd and real rsync."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from support.sshd import SshdHost


def _project(tmp: Path, remote_root: Path) -> Path:
    proj = tmp / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "model.py").write_text("print('hi')\n")
    (proj / ".gitignore").write_text("*.tmp\n")
    (proj / "junk.tmp").write_text("x")
    (proj / "experiments" / "local_only").mkdir(parents=True)
    (proj / "mlconnect.toml").write_text(f'[hosts.h]\nremote_root = "{remote_root}"\n')
    return proj


def _mlc(proj: Path, h: SshdHost, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLCONNECT_SSH_CONFIG": str(h.ssh_config)}
    return subprocess.run([sys.executable, "-m", "mlconnect", *args, "--host", h.alias], cwd=proj, env=env,
                          capture_output=True, text=True, timeout=60, **kw)


def test_sync_excludes_dry_run_and_protects_experiments(sshd_host: SshdHost, tmp_path: Path) -> None:
    remote = tmp_path / "deep" / "remote"  # parents missing: created with mkdir -p, not --mkpath
    proj = _project(tmp_path, remote)
    (proj / "mlconnect.toml").write_text(f'[hosts.{sshd_host.alias}]\nremote_root = "{remote}"\n')
    dry = _mlc(proj, sshd_host, "sync", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert '"dry_run": true' in dry.stdout and not remote.exists()
    first = _mlc(proj, sshd_host, "sync")
    assert first.returncode == 0, first.stderr
    assert (remote / "src" / "model.py").read_text() == "print('hi')\n"
    assert not (remote / "junk.tmp").exists()  # .gitignore
    assert not (remote / "experiments").exists()  # never sent
    (remote / "experiments" / "exp_001").mkdir(parents=True)
    (remote / "experiments" / "exp_001" / "training.log").write_text("precious")
    (remote / "stale.py").write_text("old")
    (remote / "src" / "gone").mkdir()
    (remote / "src" / "gone" / "old_helper.py").write_text("old")
    preview = _mlc(proj, sshd_host, "sync", "--delete", "--dry-run")  # names what it would delete
    assert preview.returncode == 0, preview.stderr
    assert "3 to delete" in preview.stderr, preview.stderr
    for path in ("stale.py", "src/gone/", "src/gone/old_helper.py"):
        assert f"would delete {path}\n" in preview.stderr, preview.stderr
    assert "would delete experiments" not in preview.stderr  # protected: never listed, never deleted
    assert (remote / "stale.py").exists()  # a dry run deletes nothing
    again = _mlc(proj, sshd_host, "sync", "--delete", "--json")
    assert again.returncode == 0, again.stderr
    assert '"files": 0' in again.stdout  # no change, nothing sent
    assert (remote / "experiments" / "exp_001" / "training.log").read_text() == "precious"
    assert not (remote / "stale.py").exists()  # --delete inside the tree only
    assert sorted(json.loads(again.stdout)["deleted_paths"]) == ["src/gone/", "src/gone/old_helper.py", "stale.py"]


def test_sync_watch_carries_a_change(sshd_host: SshdHost, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    proj = _project(tmp_path, remote)
    (proj / "mlconnect.toml").write_text(f'[hosts.{sshd_host.alias}]\nremote_root = "{remote}"\n')
    env = {**os.environ, "MLCONNECT_SSH_CONFIG": str(sshd_host.ssh_config)}
    p = subprocess.Popen([sys.executable, "-m", "mlconnect", "sync", "--watch", "--host", sshd_host.alias],
                         cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (remote / "src" / "model.py").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        (proj / "src" / "model.py").write_text("print('changed')\n")
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if (remote / "src" / "model.py").read_text() == "print('changed')\n":
                break
            time.sleep(0.1)
        assert (remote / "src" / "model.py").read_text() == "print('changed')\n"
    finally:
        p.terminate()
        p.wait(10)
