"""Is this Linux host a WSL2 distro, and what keeps it running when nobody has a terminal open?

WSL stops a distro about 15 s after the last *Windows-side* WSL program exits (``[general]
instanceIdleTimeout`` in the Windows user's ``.wslconfig``, default 15000 ms; negative = never).
Linux processes do not count: not sshd, not systemd services, not a detached training run. So a
run started over SSH dies with the distro unless the timeout is negative or a Windows-side
process (the keep-alive task ``mlconnect setup windows`` writes) holds the distro up.

Standard library only, and no mlconnect import: ``mlconnect doctor`` sends this file's source to
the host as a ``python -c`` program (it works before ``bootstrap``), and the host-side agent
imports it to warn before a run starts. Tests point it at a fake layout through
``MLCONNECT_WSL_OSRELEASE`` (the kernel release file) and ``MLCONNECT_WSL_ROOT`` (the root under
which ``/mnt/c`` and ``/etc/wsl.conf`` are read); ``wslvar``, ``cmd.exe``, ``schtasks.exe`` and
``wslinfo`` are found on PATH like any program.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

TASK_NAME = "mlconnect WSL2 keep-alive"
IDLE_DEFAULT_MS = 15000  # WSL's own default for [general] instanceIdleTimeout
CALL_TIMEOUT_S = 5.0  # one Windows interop call; four at most keep doctor within its 22 s
SETUP_HINT = "`mlconnect setup windows` on the laptop writes the scripts"


def _root() -> Path:
    return Path(os.environ.get("MLCONNECT_WSL_ROOT") or "/")


def _under_root(path: str) -> Path:
    return _root() / path.lstrip("/")


def is_wsl() -> bool:
    """True on a WSL kernel (its release string names Microsoft: ``5.15.x-microsoft-standard-WSL2``)."""
    try:
        text = Path(os.environ.get("MLCONNECT_WSL_OSRELEASE") or "/proc/sys/kernel/osrelease").read_text()
    except OSError:
        return False
    return "microsoft" in text.lower()


def read_ini(path: Path) -> dict[str, dict[str, str]]:
    """Sections -> keys -> values, both lower-cased (WSL reads its keys case-insensitively).

    Raises OSError when the file cannot be read, ValueError when it is not an INI file.
    """
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    parser = configparser.ConfigParser(strict=False, interpolation=None, inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string("[__top__]\n" + text)  # keys before any section are legal for WSL
    except configparser.Error as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    return {s.lower(): {k.lower(): v.strip() for k, v in parser.items(s)} for s in parser.sections()}


def _call(argv: list[str]) -> tuple[int, str] | None:
    """(exit code, stdout) of a Windows program through WSL interop; None when it cannot run."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        # cwd=/ : cmd.exe refuses a Linux working directory with a UNC warning on stderr.
        cp = subprocess.run([exe, *argv[1:]], capture_output=True, timeout=CALL_TIMEOUT_S, cwd="/",
                            stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    raw = cp.stdout
    text = raw.decode("utf-16-le", "replace") if raw[1:2] == b"\x00" else raw.decode("utf-8", "replace")
    return cp.returncode, text.replace("\r", "").strip()


def windows_profile() -> tuple[str | None, str]:
    """(the Windows user's profile folder, e.g. ``C:\\Users\\ana``, or None; how it was found or why not)."""
    for argv in (["wslvar", "USERPROFILE"], ["cmd.exe", "/d", "/c", "echo %USERPROFILE%"]):
        got = _call(argv)
        if got and got[0] == 0 and re.match(r"^[A-Za-z]:\\", got[1].splitlines()[-1] if got[1] else ""):
            return got[1].splitlines()[-1].strip(), argv[0]
    return None, "neither `wslvar USERPROFILE` nor `cmd.exe /c echo %USERPROFILE%` answered (Windows interop off?)"


def linux_path(windows_path: str) -> Path:
    """``C:\\Users\\ana`` -> ``/mnt/c/Users/ana`` (under MLCONNECT_WSL_ROOT in tests)."""
    drive, rest = windows_path[0].lower(), windows_path[2:].replace("\\", "/").strip("/")
    return _under_root(f"/mnt/{drive}/{rest}")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def inspect() -> dict:
    """Everything the checks need, as plain JSON data (this runs on the host)."""
    info: dict = {"wsl": is_wsl()}
    if not info["wsl"]:
        return info
    profile, how = windows_profile()
    cfg: dict = {"profile": profile, "how": how}
    if profile:
        path = linux_path(profile) / ".wslconfig"
        cfg["path"] = f"{profile}\\.wslconfig"
        try:
            ini = read_ini(path)
            cfg.update(exists=True, instance_idle=ini.get("general", {}).get("instanceidletimeout"),
                       vm_idle=ini.get("wsl2", {}).get("vmidletimeout"),
                       networking=ini.get("wsl2", {}).get("networkingmode"))
        except FileNotFoundError:
            cfg["exists"] = False
        except (OSError, ValueError) as exc:
            cfg["error"] = f"{type(exc).__name__}: {exc}"
    info["wslconfig"] = cfg
    conf = _under_root("/etc/wsl.conf")
    try:
        boot = read_ini(conf).get("boot", {})
        info["systemd"] = boot.get("systemd", "").lower() == "true"
    except FileNotFoundError:
        info["systemd"] = False
    except (OSError, ValueError) as exc:
        info["systemd"], info["wsl_conf_error"] = False, f"{type(exc).__name__}: {exc}"
    info["systemd_running"] = _under_root("/run/systemd/system").is_dir()
    task = _call(["schtasks.exe", "/Query", "/TN", TASK_NAME, "/FO", "LIST"])
    info["task"] = None if task is None else {"found": task[0] == 0, "running": "Running" in task[1]}
    mode = _call(["wslinfo", "--networking-mode"])
    info["networking_mode"] = mode[1].strip().lower() if mode and mode[0] == 0 and mode[1] else None
    return info


def findings(info: dict) -> list[dict]:
    """The WSL checks as ``{name, status, detail, fix}`` (PASS or WARN); empty when not WSL."""
    if not info.get("wsl"):
        return []
    out: list[dict] = []

    def add(name: str, ok: bool, detail: str, fix: str = "") -> None:
        out.append({"name": name, "status": "PASS" if ok else "WARN", "detail": detail, "fix": "" if ok else fix})

    cfg = info.get("wslconfig") or {}
    where = cfg.get("path") or "%UserProfile%\\.wslconfig"
    idle_fix = (f"set instanceIdleTimeout=-1 under [general] in {where} (`mlconnect setup windows "
                "--no-idle-timeout` writes it), then `wsl --shutdown` once")
    stops = "the distro, sshd and every run stop ~15 s after the last Windows-side WSL program exits"
    if not cfg.get("profile"):
        add("wsl-idle", False, f"cannot read .wslconfig: {cfg.get('how')}", "check it in Windows: " + idle_fix)
    elif cfg.get("error"):
        add("wsl-idle", False, f"cannot read {where}: {cfg['error']}", idle_fix)
    elif not cfg.get("exists"):
        add("wsl-idle", False, f"no {where}: {stops}", idle_fix)
    else:
        ms = _int(cfg.get("instance_idle"))
        if ms is not None and ms < 0:
            add("wsl-idle", True, f"[general] instanceIdleTimeout={ms} in {where}: the distro never idles out")
        else:
            now = f"={cfg['instance_idle']}" if cfg.get("instance_idle") is not None else \
                f" not set ({IDLE_DEFAULT_MS} ms)"
            add("wsl-idle", False, f"[general] instanceIdleTimeout{now} in {where}: {stops}", idle_fix)
        wanted, actual = (cfg.get("networking") or "nat").lower(), info.get("networking_mode")
        if wanted == "mirrored" and actual and actual != "mirrored":
            add("wsl-network", False, f"{where} asks for mirrored networking but WSL runs {actual} "
                "(mirrored needs Windows 11 22H2+; WSL falls back silently)",
                "update Windows and run `wsl --update`, or rerun `mlconnect setup windows` without --mirrored")
    if info.get("systemd") and info.get("systemd_running"):
        add("wsl-systemd", True, "systemd is on (/etc/wsl.conf): sshd starts with the distro")
    elif info.get("systemd"):
        add("wsl-systemd", False, "systemd=true is in /etc/wsl.conf but systemd is not running",
            "run `wsl --shutdown` in Windows once, then reconnect")
    else:
        why = info.get("wsl_conf_error") or "no [boot] systemd=true in /etc/wsl.conf"
        add("wsl-systemd", False, f"systemd is off ({why}): sshd does not start with the distro",
            'run `sudo "$(command -v mlconnect)" setup server ... --apply` there (it sets it), then `wsl --shutdown`')
    task = info.get("task")
    if task is None:
        add("wsl-keepalive", False, f"cannot ask Windows for the '{TASK_NAME}' task (schtasks.exe does not run: "
            "interop off?)", f"check in PowerShell: Get-ScheduledTask -TaskName '{TASK_NAME}'")
    elif task.get("found"):
        add("wsl-keepalive", True, f"scheduled task '{TASK_NAME}' is "
            + ("running" if task.get("running") else "registered (not running now)"))
    else:
        add("wsl-keepalive", False, f"no '{TASK_NAME}' scheduled task on Windows: nothing starts WSL at logon "
            "and holds the distro up", f"run schedule_keepalive.ps1 as Administrator ({SETUP_HINT})")
    return out


def run_warnings(info: dict | None = None) -> list[str]:
    """Why a detached run on this host would die with the last WSL window, one line per reason.

    Empty off WSL, with a negative instanceIdleTimeout, or while the keep-alive task holds the distro.
    """
    try:
        info = inspect() if info is None else info
        rows = {r["name"]: r for r in findings(info)}
    except Exception:  # noqa: BLE001 - a warning must never fail the launch it rides on
        return []
    if "wsl-idle" not in rows or rows["wsl-idle"]["status"] == "PASS" or (info.get("task") or {}).get("running"):
        return []
    return [f"{r['detail']} — {r['fix']}" for name, r in rows.items()
            if name in ("wsl-idle", "wsl-keepalive") and r["status"] == "WARN"]


if __name__ == "__main__":  # `mlconnect doctor` runs this file's source with `python -c`
    print(json.dumps(inspect()))
