"""`mlconnect setup vscode`: Remote-SSH settings merged into the project's .vscode/settings.json.

Only our keys change; every other key and the order of keys stay. Exclude patterns are added, never
removed (a pattern you set to ``false`` stays ``false``). A settings.json with comments or trailing
commas (JSONC) is refused rather than rewritten without them.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlconnect.errors import MlconnectError, UsageError
from mlconnect.fileio import atomic_write_text

EXCLUDES = ("**/experiments/**", "**/checkpoints/**", "**/logs/**", "**/.venv/**")
WORKSPACE_PYTHON = "${workspaceFolder}/.venv/bin/python"


@dataclass
class VscodeResult:
    path: Path
    changed: bool
    backup: Path | None
    keys: list[str] = field(default_factory=list)


def _defaults(project: Path, host: str | None, python: str | None) -> tuple[str, str]:
    from mlconnect.settings import load_settings

    s = load_settings(cwd=project)
    host = host or s.default_host
    if not host or host in ("local", "localhost-local"):
        raise UsageError("no host to connect VS Code to",
                         "pass --host <ssh alias> (or set default_host in mlconnect.toml)")
    if not python:
        hc = s.hosts.get(host)
        root = s.remote_root_for(host).rstrip("/")
        python = hc.python if hc and hc.python else WORKSPACE_PYTHON
        if python.startswith(root + "/"):  # VS Code opens remote_root: say it relative to the workspace
            python = "${workspaceFolder}" + python[len(root):]
    return host, python


def load_settings_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MlconnectError(
            f"{path} is not plain JSON (line {exc.lineno}: {exc.msg}); it may have comments or trailing commas",
            "mlconnect will not rewrite it and lose them: remove the comments, or add the keys by hand "
            "(`mlconnect setup vscode --help` lists them)") from None
    if not isinstance(data, dict):
        raise MlconnectError(f"{path} does not hold a JSON object", "fix the file, then rerun")
    return data


def merge_settings(data: dict[str, Any], host: str, python: str) -> tuple[dict[str, Any], list[str]]:
    out = json.loads(json.dumps(data))  # a deep copy that keeps key order
    notes = []
    platforms = out.get("remote.SSH.remotePlatform")
    if not isinstance(platforms, dict):
        platforms = {}
    if platforms.get(host) != "linux":
        platforms[host] = "linux"
        notes.append(f'remote.SSH.remotePlatform["{host}"] = "linux"')
    out["remote.SSH.remotePlatform"] = platforms
    old = out.get("python.defaultInterpreterPath")
    if old != python:
        out["python.defaultInterpreterPath"] = python
        notes.append(f"python.defaultInterpreterPath = {python}" + (f" (was {old})" if old else ""))
    for key in ("files.watcherExclude", "search.exclude"):
        cur = out.get(key)
        if not isinstance(cur, dict):
            cur = {}
        added = [p for p in EXCLUDES if p not in cur]
        for p in added:
            cur[p] = True
        out[key] = cur
        if added:
            notes.append(f"{key} += {', '.join(added)}")
    return out, notes


def setup_vscode(project: Path, *, host: str | None = None, python: str | None = None) -> VscodeResult:
    project = project.resolve()
    if not project.is_dir():
        raise UsageError(f"{project} is not a folder", "pass --path with the project folder")
    host, python = _defaults(project, host, python)
    path = project / ".vscode" / "settings.json"
    data = load_settings_json(path)
    merged, notes = merge_settings(data, host, python)
    if merged == data and path.exists():
        return VscodeResult(path=path, changed=False, backup=None, keys=[])
    backup = None
    if path.exists():
        backup = path.with_name(f"settings.json.mlconnect-backup-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
    atomic_write_text(path, json.dumps(merged, indent=4, ensure_ascii=False) + "\n")
    return VscodeResult(path=path, changed=True, backup=backup, keys=notes)
