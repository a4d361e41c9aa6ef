"""`mlconnect setup vscode`: merges into .vscode/settings.json, keeps unrelated keys, refuses JSONC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlconnect.errors import MlconnectError
from mlconnect.setup.vscode import EXCLUDES, setup_vscode

EXISTING = {
    "editor.rulers": [100],
    "remote.SSH.remotePlatform": {"other-box": "windows"},
    "files.watcherExclude": {"**/.git/objects/**": True, "**/logs/**": False},
    "python.defaultInterpreterPath": "/usr/bin/python3",
    "[python]": {"editor.formatOnSave": True},
}


def test_merge_keeps_unrelated_keys_and_is_idempotent(tmp_path: Path):
    (tmp_path / ".vscode").mkdir()
    f = tmp_path / ".vscode" / "settings.json"
    f.write_text(json.dumps(EXISTING, indent=2))
    r = setup_vscode(tmp_path, host="mellowise-ml", python="/home/ana/mlconnect/proj/.venv/bin/python")
    assert r.changed and r.backup is not None and json.loads(r.backup.read_text()) == EXISTING
    data = json.loads(f.read_text())
    assert list(data)[:5] == list(EXISTING)  # order kept, nothing dropped
    assert data["editor.rulers"] == [100] and data["[python]"] == {"editor.formatOnSave": True}
    assert data["remote.SSH.remotePlatform"] == {"other-box": "windows", "mellowise-ml": "linux"}
    assert data["python.defaultInterpreterPath"] == "/home/ana/mlconnect/proj/.venv/bin/python"
    wx = data["files.watcherExclude"]
    assert wx["**/.git/objects/**"] is True and wx["**/logs/**"] is False  # the user's own choice stays
    assert all(p in wx for p in EXCLUDES) and all(data["search.exclude"][p] is True for p in EXCLUDES)
    before = f.read_bytes()
    again = setup_vscode(tmp_path, host="mellowise-ml", python="/home/ana/mlconnect/proj/.venv/bin/python")
    assert not again.changed and f.read_bytes() == before


def test_jsonc_is_refused_not_clobbered(tmp_path: Path):
    (tmp_path / ".vscode").mkdir()
    f = tmp_path / ".vscode" / "settings.json"
    text = '{\n  // my comment\n  "editor.rulers": [100],\n}\n'
    f.write_text(text)
    with pytest.raises(MlconnectError) as e:
        setup_vscode(tmp_path, host="box", python="/x/python")
    assert "comments or trailing commas" in e.value.message
    assert f.read_text() == text and len(list(f.parent.iterdir())) == 1


def test_cli_uses_the_project_host_and_workspace_python(tmp_path: Path):
    (tmp_path / "mlconnect.toml").write_text(
        'default_host = "gpubox"\n[hosts.gpubox]\nremote_root = "~/mlconnect/p"\n'
        'python = "~/mlconnect/p/.venv/bin/python"\n')
    env = {**os.environ, "NO_COLOR": "1", "MLCONNECT_CONFIG": str(tmp_path / "none.toml")}
    env.pop("MLCONNECT_HOST", None)
    cp = subprocess.run([sys.executable, "-m", "mlconnect", "setup", "vscode", "--path", str(tmp_path)],
                        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert cp.returncode == 0, cp.stderr
    data = json.loads((tmp_path / ".vscode" / "settings.json").read_text())
    assert data["remote.SSH.remotePlatform"] == {"gpubox": "linux"}
    assert data["python.defaultInterpreterPath"] == "${workspaceFolder}/.venv/bin/python"
