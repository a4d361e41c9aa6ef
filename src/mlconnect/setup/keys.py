"""authorized_keys for `setup server`: the --authorized-key argument checked, keys appended once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from mlconnect.errors import UsageError
from mlconnect.fileio import atomic_write_text

_KEY_TYPE = re.compile(
    r"^(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-[a-z0-9@.-]+)(-cert-v01@openssh\.com)?$")


def key_id(line: str) -> tuple[str, str] | None:
    """(type, base64 blob) of an authorized_keys line, options and comment ignored."""
    parts = line.split()
    for i, p in enumerate(parts[:-1]):
        if _KEY_TYPE.match(p):
            return p, parts[i + 1]
    return None


def read_keys_arg(value: str | None) -> list[str]:
    """``--authorized-key``: a key line, or a file of key lines (e.g. id_ed25519.pub)."""
    if not value:
        return []
    path = Path(os.path.expanduser(value))
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    if "PRIVATE KEY" in text:
        raise UsageError("--authorized-key was given a PRIVATE key", "pass the .pub file or the public key line")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise UsageError(f"--authorized-key {value!r} holds no key", "pass the line `mlconnect setup client` printed")
    for ln in lines:
        if key_id(ln) is None:
            raise UsageError(f"--authorized-key: not a public key: {ln[:40]!r}",
                             "pass the whole line, e.g. \"ssh-ed25519 AAAA... ana@mac\" (quoted)")
        _check_with_ssh_keygen(ln)
    return lines


def _check_with_ssh_keygen(line: str) -> None:
    if shutil.which("ssh-keygen") is None:
        return
    with tempfile.NamedTemporaryFile("w", suffix=".pub", delete=False) as f:
        f.write(line + "\n")
    try:
        cp = subprocess.run(["ssh-keygen", "-l", "-f", f.name], capture_output=True, text=True, timeout=15,
                            stdin=subprocess.DEVNULL)
    finally:
        os.unlink(f.name)
    if cp.returncode != 0:
        raise UsageError(f"--authorized-key: ssh-keygen cannot read the key {line[:40]!r}...",
                         "copy the whole public key line again (it may have been cut)")


def install_keys(auth: Path, keys: list[str], uid: int, gid: int) -> int:
    """Append the keys not already there; .ssh 700 and authorized_keys 600, owned by the user."""
    existing = auth.read_text(encoding="utf-8") if auth.exists() else ""
    have = {key_id(ln) for ln in existing.splitlines()}
    new = []
    for k in keys:
        kid = key_id(k)
        if kid not in have:
            new.append(k)
            have.add(kid)
    auth.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(auth.parent, 0o700)
    if new:
        text = existing + ("" if not existing or existing.endswith("\n") else "\n") + "\n".join(new) + "\n"
        atomic_write_text(auth, text)
    if auth.exists():
        os.chmod(auth, 0o600)
    if os.geteuid() == 0:
        for p in (auth.parent, auth):
            if p.exists():
                os.chown(p, uid, gid)
    return len(new)
