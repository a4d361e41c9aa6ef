"""Issue 10, failure 2: a full disk while saving a checkpoint is one line naming the path, the free
space and what to do; training.log and progress.json say why; the last good checkpoint survives.

The disk really fills: ``experiments/`` is a small tmpfs (as root, which CI is) filled up to a few
kilobytes. Where mounting is not allowed, the same run gets a real RLIMIT_FSIZE instead, so the
checkpoint write fails for real in both cases ("File too large" instead of "No space left").
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from runs_support import cli_env, mlc, read_json, tiny_project

from mlconnect.engine.checkpoint import load_checkpoint

pytestmark = pytest.mark.timeout(240)


@contextlib.contextmanager
def small_disk(path: Path, size: str = "2m"):
    """A tmpfs at ``path``; yields False (nothing mounted) where this process may not mount."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        yield False
        return
    cp = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
                        capture_output=True, text=True)
    if cp.returncode != 0:  # a container without CAP_SYS_ADMIN
        yield False
        return
    try:
        yield True
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave: int) -> Path:
    """Fill the file system of ``path`` until ``leave`` bytes are free."""
    filler = path / "filler.bin"
    st = os.statvfs(path)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


@pytest.mark.slow  # several real trainings
def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path):
    root = tiny_project(tmp_path, epochs=1)
    env = cli_env(tmp_path)
    exp = root / "experiments" / "e"
    with small_disk(root / "experiments") as mounted:
        mlc(["train", "--config", "configs/tiny.yaml", "-e", "e"], root, env)  # epoch 1: fine
        assert load_checkpoint(exp / "checkpoints" / "last.pt")["epoch"] == 1
        limit = None
        if mounted:
            filler = fill(root / "experiments", leave=48 * 1024)  # logs fit, a 280 kB checkpoint not
        else:
            limit = 100 * 1024

            def limit_fn() -> None:
                resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

        cp = subprocess.run([sys.executable, "-m", "mlconnect", "train", "-e", "e", "--resume",
                             "--set", "epochs=2"], cwd=root, env=env, text=True, capture_output=True,
                            timeout=120, preexec_fn=limit_fn if limit else None)
        assert cp.returncode == 1, cp.stderr
        lines = cp.stderr.strip().splitlines()
        assert len(lines) == 1, cp.stderr
        line = lines[0]
        assert line.startswith("error: cannot write ") and "checkpoints/" in line and ".pt" in line
        assert ("No space left on device" if mounted else "File too large") in line
        assert "free there" in line and "mlconnect train --experiment e --resume" in line
        # The why is on disk too, and the last good checkpoint still loads (epoch 1).
        assert "failed: cannot write" in (exp / "training.log").read_text()
        progress = read_json(exp / "progress.json")
        assert progress["state"] == "failed" and "cannot write" in progress["error"]
        assert load_checkpoint(exp / "checkpoints" / "last.pt")["epoch"] == 1
        assert not [p for p in (exp / "checkpoints").iterdir() if p.name.endswith(".tmp")]
        # Space back: the advice in the message works.
        if mounted:
            filler.unlink()
        done = mlc(["train", "-e", "e", "--resume", "--set", "epochs=2"], root, env)
        assert "epoch 2/2" in done.stdout
        assert read_json(exp / "progress.json")["state"] == "finished"
