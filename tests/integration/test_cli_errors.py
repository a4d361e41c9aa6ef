"""The CLI's error contract (docs/USER-FLOW.md): one line, exit 1 for errors and 2 for usage; no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "MLCONNECT_DEBUG": "0", "MLCONNECT_HOST": ""}


def mlconnect(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=60)


@pytest.mark.parametrize(("args", "code", "says"), [
    (["no-such-command"], 2, "No such command"),
    (["train", "--no-such-flag"], 2, "No such option"),
    (["tunnel", "--port", "8000"], 2, "error: no host"),
    (["train", "--config", "missing.yaml"], 1, "missing.yaml"),
    (["serve", "no_such_experiment"], 1, "no_such_experiment"),
])
def test_errors_are_one_line_with_exit_code(tmp_path, args: list[str], code: int, says: str) -> None:
    cp = mlconnect(*args, cwd=str(tmp_path))
    assert cp.returncode == code, cp.stderr
    assert says in cp.stderr
    assert "Traceback" not in cp.stderr + cp.stdout


def test_version_and_help_exit_zero() -> None:
    cp = mlconnect("--version")
    assert cp.returncode == 0 and cp.stdout.startswith("mlconnect ")
    cp = mlconnect("--help")
    assert cp.returncode == 0
    for noun in ("train", "quickstart", "sync", "ps", "logs", "stop", "resume", "pull", "status", "tunnel",
                 "doctor", "serve", "monitor", "compare", "ls"):
        assert noun in cp.stdout, noun
