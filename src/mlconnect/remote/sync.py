"""rsync the project to the host: excludes, dry-run preview, experiments never deleted, retries.

Only options macOS's rsync 2.6.9 / openrsync understand (no --info, no --mkpath). rsync writes each
file to a temp name and renames it (we never pass --inplace), so an interrupted sync leaves no
half-written file; transport errors are retried with backoff.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlconnect.errors import RemoteError
from mlconnect.remote.ssh import Target

DEFAULT_EXCLUDES = (".git/", ".venv/", "venv/", "__pycache__/", "experiments/", "checkpoints/", "logs/",
                    "*.log", "data/", ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".DS_Store",
                    ".mlconnect-cache/",  # the loader's binary cache: rebuilt where the data is
                    "/sweeps/")  # a study lives on its box; never overwritten by the laptop's
RETRY_RC = {10, 12, 30, 35, 255}  # socket I/O, protocol stream, timeout, daemon timeout, ssh
PROTECT = ("experiments/", "/sweeps/")  # never deleted on the host, even with --delete


@dataclass
class SyncResult:
    files: int  # regular files transferred (or that would be)
    bytes: int  # total size of those files
    deleted: int
    dry_run: bool
    seconds: float
    deleted_paths: list[str] = field(default_factory=list)  # host paths (relative) removed, or that would be


def rsync_argv(target: Target, src: Path, *, dry_run: bool = False, checksum: bool = False,
               delete: bool = False) -> list[str]:
    """The rsync argv (pure; unit-tested)."""
    argv = ["rsync", "-rlptz", "--stats", "--itemize-changes", "--timeout=60"]
    if dry_run:
        argv.append("--dry-run")
    if checksum:
        argv.append("--checksum")
    if delete:
        # --delete only inside the synced tree; protect filters keep remote experiments whatever happens.
        argv += ["--delete"] + [f"--filter=P {p}" for p in PROTECT]
    if (src / ".gitignore").is_file():
        argv.append("--filter=:- .gitignore")
    argv += [f"--exclude={e}" for e in DEFAULT_EXCLUDES]
    if not target.is_local:
        argv += ["-e", target.rsync_rsh()]
    argv += [str(src).rstrip("/") + "/", target.rsync_path(target.remote_root.rstrip("/") + "/")]
    return argv


def _stat(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    return int(m.group(1).replace(",", "").replace(".", "")) if m else 0


def parse_stats(stdout: str) -> tuple[int, int, int]:
    """(files transferred, their bytes, deletions) from --stats and --itemize-changes output."""
    files = _stat(r"Number of (?:regular )?files transferred: ([\d,.]+)", stdout)
    size = _stat(r"Total transferred file size: ([\d,.]+)", stdout)
    return files, size, len(deleted_paths(stdout))


def deleted_paths(stdout: str) -> list[str]:
    """The paths --itemize-changes lists as ``*deleting   path`` (folders end in ``/``), in rsync's order."""
    return [ln[len("*deleting"):].strip() for ln in stdout.splitlines() if ln.startswith("*deleting")]


def sync_project(target: Target, src: Path, *, dry_run: bool = False, checksum: bool = False,
                 delete: bool = False, retries: int = 3) -> SyncResult:
    """Sync ``src`` to ``target.remote_root``; the remote root is created first (no --mkpath)."""
    start = time.monotonic()
    made_root = False  # rsync creates remote_root itself when its parent exists; mkdir -p only on demand
    argv = rsync_argv(target, src, dry_run=dry_run, checksum=checksum, delete=delete)
    delay = 1.0
    for attempt in range(retries + 1):
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise RemoteError("rsync is not installed on this machine",
                              "install it (macOS has it; Linux: `sudo apt-get install rsync`)") from None
        if cp.returncode == 0:
            files, size, deleted = parse_stats(cp.stdout)
            return SyncResult(files, size, deleted, dry_run, time.monotonic() - start, deleted_paths(cp.stdout))
        if "command not found" in cp.stderr or cp.returncode == 127:
            raise RemoteError(f"rsync is not installed on {target.name}",
                              "install it there: `sudo apt-get install -y rsync`",
                              command=argv, returncode=cp.returncode, stderr=cp.stderr)
        if (not made_root and not dry_run and not target.is_local
                and "No such file or directory" in cp.stderr and cp.returncode in (3, 11, 12)):
            target.run(["mkdir", "-p", target.remote_root], cwd="~")  # no --mkpath on macOS rsync
            made_root = True
            continue
        if cp.returncode in RETRY_RC and attempt < retries:
            time.sleep(delay)
            delay *= 2
            continue
        break
    raise RemoteError(f"rsync to {target.name} failed (exit {cp.returncode}): "
                      f"{(cp.stderr.strip().splitlines() or ['?'])[-1]}",
                      f"check the connection with `ssh {target.name} true`; nothing half-written was left",
                      command=argv, returncode=cp.returncode, stderr=cp.stderr)
