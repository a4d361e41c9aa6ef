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
from mlconnect.remote.failures import classify_ssh_failure
from mlconnect.remote.ssh import Target

DEFAULT_EXCLUDES = (".git/", ".venv/", "venv/", "__pycache__/", "experiments/", "checkpoints/", "logs/",
                    "*.log", "data/", ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".DS_Store",
                    ".mlconnect-cache/",  # the loader's binary cache: rebuilt where the data is
                    "/sweeps/")  # a study lives on its box; never overwritten by the laptop's
RETRY_RC = {10, 12, 30, 35, 255}  # socket I/O, protocol stream, timeout, daemon timeout, ssh
SSH_RC = {12, 255}  # rsync's exits when ssh itself failed (its stderr then carries ssh's message)
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
        why = _rsync_failure(target, argv, cp.returncode, cp.stderr)
        if why is not None:  # a wrong key, a changed host key, a full or read-only disk: retrying cannot help
            raise why
        if cp.returncode in RETRY_RC and attempt < retries:
            time.sleep(delay)
            delay *= 2
            continue
        break
    if cp.returncode in SSH_RC and (ssh := classify_ssh_failure(target, argv, 255, _ssh_words(cp.stderr))):
        raise ssh  # still unreachable after the retries: ssh's words and the ssh test command
    raise RemoteError(f"rsync to {target.name} failed (exit {cp.returncode}): "
                      f"{(cp.stderr.strip().splitlines() or ['?'])[-1]}",
                      f"check the connection with `ssh {target.name} true`; nothing half-written was left",
                      command=argv, returncode=cp.returncode, stderr=cp.stderr)


# rsync's own words about the host's disk, and what to do about each.
_DISK_WORDS = (("No space left on device", "the host's disk is full",
                "free space there (`mlconnect status` shows it) or point remote_root elsewhere in mlconnect.toml"),
               ("Disc quota exceeded", "the disk quota on the host is used up",
                "free space there or point remote_root elsewhere in mlconnect.toml"),
               ("Read-only file system", "remote_root is on a read-only file system",
                "point remote_root in mlconnect.toml at a writable folder"),
               ("Permission denied (13)", "no permission to write under remote_root",
                "point remote_root in mlconnect.toml at a folder you own"))


def _ssh_words(stderr: str) -> str:
    """stderr without rsync's own closing lines, so ssh's message is the last one."""
    return "\n".join(ln for ln in stderr.splitlines()
                     if not ln.startswith(("rsync error:", "rsync: connection unexpectedly closed")))


def _rsync_failure(target: Target, argv: list[str], rc: int, stderr: str) -> RemoteError | None:
    """A failure no retry can fix, as one line: ssh refused (key, host key) or the host's disk said no."""
    ssh = classify_ssh_failure(target, argv, 255, _ssh_words(stderr)) if rc in SSH_RC else None
    if ssh is not None and "cannot reach" not in ssh.message:  # unreachable: worth the retries
        return ssh
    for words, what, hint in _DISK_WORDS:
        for line in stderr.splitlines():
            if words in line:
                return RemoteError(f"rsync to {target.name} failed: {what} ({line.strip()})",
                                   f"{hint}; nothing half-written was left",
                                   command=argv, returncode=rc, stderr=stderr)
    return None
