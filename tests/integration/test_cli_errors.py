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


# A base install (`make quickstart`) has no fastapi/uvicorn (the `serve` extra): hide them from this child.
_WITHOUT_SERVE_EXTRA = """
import importlib.util, sys
_find = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a: None if name in ("fastapi", "uvicorn") else _find(name, *a)
sys.argv = ["mlconnect", "serve", "exp"]
from mlconnect.cli.main import main
main()
"""


def test_serve_without_the_serve_extra_says_how_to_install_it(tmp_path) -> None:
    cp = subprocess.run([sys.executable, "-c", _WITHOUT_SERVE_EXTRA], capture_output=True, text=True, env=ENV,
                        cwd=tmp_path, timeout=60)
    assert cp.returncode == 1, cp.stderr
    assert "error: serving needs fastapi and uvicorn" in cp.stderr and "mlconnect[serve]" in cp.stderr
    assert "Traceback" not in cp.stderr
