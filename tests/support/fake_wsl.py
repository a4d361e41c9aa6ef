"""A fake WSL2 layout in a temp folder: the kernel release file, ``/mnt/c/Users/<u>/.wslconfig``,
``/etc/wsl.conf``, and small ``wslvar`` / ``cmd.exe`` / ``schtasks.exe`` / ``wslinfo`` programs.

``mlconnect.wsl`` finds it through MLCONNECT_WSL_OSRELEASE, MLCONNECT_WSL_ROOT and PATH (see
:func:`env_for`), so the real code reads real files and runs real programs, nothing patched.
"""

from __future__ import annotations

import os
from pathlib import Path

USER_PROFILE = "C:\\Users\\ana"
TASK = "mlconnect WSL2 keep-alive"


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def make_fake_wsl(base: Path, *, wslconfig: str | None = None, wsl_conf: str | None = "[boot]\nsystemd=true\n",
                  systemd_running: bool = True, task: str | None = "Running", profile: str = "wslvar",
                  networking: str | None = "nat", kernel: str = "5.15.167.4-microsoft-standard-WSL2") -> Path:
    """Build the layout under ``base``; returns ``base``.

    ``task``: "Running" or "Ready" (the task exists), "missing" (schtasks says no such task), None (no
    schtasks.exe: interop off). ``profile``: "wslvar", "cmd" (only cmd.exe answers) or "none".
    """
    root, bin_ = base / "root", base / "bin"
    (root / "mnt/c/Users/ana").mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    bin_.mkdir(parents=True, exist_ok=True)
    (base / "osrelease").write_text(kernel + "\n")
    if wslconfig is not None:
        (root / "mnt/c/Users/ana/.wslconfig").write_text(wslconfig)
    if wsl_conf is not None:
        (root / "etc/wsl.conf").write_text(wsl_conf)
    if systemd_running:
        (root / "run/systemd/system").mkdir(parents=True, exist_ok=True)
    answer = f"printf '%s\\r\\n' '{USER_PROFILE}'\n"
    if profile == "wslvar":
        _script(bin_ / "wslvar", f'[ "$1" = USERPROFILE ] || exit 1\n{answer}')
    if profile in ("wslvar", "cmd"):
        _script(bin_ / "cmd.exe", f'[ "$3" = "echo %USERPROFILE%" ] || exit 1\n{answer}')
    if task is not None:
        found = (f"printf 'Folder: \\\\\\r\\nTaskName: \\\\{TASK}\\r\\nStatus: {task}\\r\\n'\nexit 0\n"
                 if task != "missing" else "echo 'ERROR: The system cannot find the file specified.' >&2\nexit 1\n")
        # Answers only the exact query mlconnect makes: a wrong task name or flag reads as "missing".
        _script(bin_ / "schtasks.exe", f'[ "$1 $2 $3 $4 $5" = "/Query /TN {TASK} /FO LIST" ] || exit 1\n{found}')
    if networking is not None:
        _script(bin_ / "wslinfo", f'[ "$1" = --networking-mode ] || exit 1\necho {networking}\n')
    return base


def env_for(base: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) plus the variables that point mlconnect.wsl at ``base``."""
    env = dict(os.environ if env is None else env)
    env.update(MLCONNECT_WSL_OSRELEASE=str(base / "osrelease"), MLCONNECT_WSL_ROOT=str(base / "root"),
               PATH=f"{base / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return env


def env_lines(base: Path) -> list[str]:
    """The same as shell lines, for a host's ``env = [...]`` in mlconnect.toml (reaches the ssh side)."""
    return [f"export MLCONNECT_WSL_OSRELEASE={base / 'osrelease'}", f"export MLCONNECT_WSL_ROOT={base / 'root'}",
            f'export PATH={base / "bin"}:"$PATH"']
