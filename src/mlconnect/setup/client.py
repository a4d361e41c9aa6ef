"""`mlconnect setup client`: a dedicated key and a marked block in ~/.ssh/config, on the laptop.

Safety rules (the manual guide got these wrong):

- ``ForwardAgent no``: root on the box must never be able to use the laptop's keys.
- No ``LocalForward`` lines: tunnels are opened on demand (``mlconnect tensorboard``), so an
  interactive ``ssh`` does not fail on a busy port nor expose services for the whole session.
- A key is created with ssh-keygen only when there is none; an existing key is never overwritten.
- Only the text between ``# >>> mlconnect NAME >>>`` and ``# <<< mlconnect NAME <<<`` is ours;
  every byte outside it is kept. The file is backed up before it changes, written atomically, and
  the staged result is checked with ``ssh -G`` first: ssh keeps the FIRST value it finds for each
  option, so a global line or an earlier ``Host *`` could silently override ours. A new block goes
  before the first ``Host``/``Match`` section that also applies to the alias, and if the effective
  values still differ from ours, nothing is written.
"""

from __future__ import annotations

import contextlib
import fnmatch
import getpass
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlconnect.errors import MlconnectError, UsageError
from mlconnect.fileio import fsync_dir

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9._:%-]+$")  # names, IPv4, IPv6 (with zone)
_USER_RE = re.compile(r"^[A-Za-z0-9._][A-Za-z0-9._-]*\$?$")


def begin_marker(name: str) -> str:
    return f"# >>> mlconnect {name} >>>"


def end_marker(name: str) -> str:
    return f"# <<< mlconnect {name} <<<"


@dataclass
class ClientResult:
    ssh_config: Path
    key: Path
    public_key: str
    key_created: bool
    changed: bool
    backup: Path | None
    block: str
    server_command: str
    warnings: list[str] = field(default_factory=list)


def default_ssh_config() -> Path:
    return Path.home() / ".ssh" / "config"


def validate_inputs(name: str, hostname: str, port: int, user: str) -> None:
    if not _NAME_RE.match(name):
        raise UsageError(f"invalid --name {name!r}",
                         "use letters, digits, '.', '_' or '-' (no spaces or wildcards), e.g. mellowise-ml")
    if not _HOSTNAME_RE.match(hostname):
        raise UsageError(f"invalid --hostname {hostname!r}", "give the box's IP address or DNS name")
    if not 0 < port < 65536:
        raise UsageError(f"invalid --port {port}", "give a TCP port between 1 and 65535 (2222 for WSL2)")
    if not _USER_RE.match(user):
        raise UsageError(f"invalid --user {user!r}", "give the login name on the box (no spaces)")


# ---- the key ------------------------------------------------------------------------------------

def ensure_key(key: Path, comment: str) -> tuple[str, bool]:
    """(public key line, created). Creates an ed25519 key only when neither file exists."""
    pub = Path(str(key) + ".pub")
    if key.exists():
        if pub.is_file():
            return pub.read_text(encoding="utf-8").strip(), False
        # The public half can always be derived from the private key (asks for a passphrase if any).
        cp = _run(["ssh-keygen", "-y", "-f", str(key)], timeout=60, interactive=True)
        if cp.returncode != 0 or not cp.stdout.strip():
            raise MlconnectError(f"cannot read the public key from {key}: {_last(cp.stderr)}",
                                 f"check the file, or pass another --key (the existing {key} is kept)")
        return cp.stdout.strip(), False
    if pub.exists():
        raise MlconnectError(f"{pub} exists but its private key {key} does not",
                             "pass --key with another path; mlconnect never overwrites a key")
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cp = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)], timeout=60)
    if cp.returncode != 0 or not pub.is_file():
        raise MlconnectError(f"ssh-keygen could not create {key}: {_last(cp.stderr)}",
                             "check that the folder is writable")
    return pub.read_text(encoding="utf-8").strip(), True


def _run(argv: list[str], *, timeout: float, interactive: bool = False) -> subprocess.CompletedProcess[str]:
    try:
        if interactive:  # stdin stays the terminal: ssh-keygen may ask for a passphrase
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise MlconnectError(f"{argv[0]} is not installed on this machine",
                             "install OpenSSH (macOS and Windows 10+ ship it)") from None
    except subprocess.TimeoutExpired:
        raise MlconnectError(f"`{shlex.join(argv)}` did not finish within {timeout:g} s",
                             "run it by hand to see what it waits for") from None


def _last(text: str | None) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


# ---- the block ----------------------------------------------------------------------------------

def _config_path_value(path: Path) -> str:
    """IdentityFile as ssh reads it: ``~/...`` under the home, quoted when it has spaces."""
    text = str(path)
    home = str(Path.home())
    if text.startswith(home + os.sep):
        text = "~/" + text[len(home) + 1:].replace(os.sep, "/")
    if any(c.isspace() for c in text):
        if '"' in text:
            raise UsageError(f"cannot write the key path {text!r} into an ssh config", "use a path without quotes")
        text = f'"{text}"'
    return text


def render_block(name: str, hostname: str, port: int, user: str, key: Path, newline: str = "\n") -> str:
    lines = [
        begin_marker(name),
        "# Written by `mlconnect setup client`; rerunning it replaces this block. No LocalForward on",
        "# purpose: `mlconnect tensorboard` / `jupyter` / `serve` open tunnels when needed.",
        f"Host {name}",
        f"  HostName {hostname}",
        f"  Port {port}",
        f"  User {user}",
        f"  IdentityFile {_config_path_value(key)}",
        "  IdentitiesOnly yes",
        "  ServerAliveInterval 15",
        "  ServerAliveCountMax 3",
        "  ForwardAgent no",
        end_marker(name),
    ]
    return newline.join(lines) + newline


def _host_patterns_match(patterns: list[str], name: str) -> bool:
    """ssh's Host matching: any positive pattern matches and no negated one does."""
    hit = False
    for p in patterns:
        neg = p.startswith("!")
        pat = p[1:] if neg else p
        if fnmatch.fnmatchcase(name, pat):
            if neg:
                return False
            hit = True
    return hit


def _keyword(line: str) -> tuple[str, list[str]]:
    s = line.strip()
    if not s or s.startswith("#"):
        return "", []
    parts = re.split(r"[\s=]+", s, maxsplit=1)
    rest = parts[1] if len(parts) > 1 else ""
    try:
        args = shlex.split(rest)
    except ValueError:
        args = rest.split()
    return parts[0].lower(), args


def _find_block(lines: list[str], name: str) -> tuple[int, int] | None:
    begins = [i for i, ln in enumerate(lines) if ln.rstrip("\r\n").strip() == begin_marker(name)]
    ends = [i for i, ln in enumerate(lines) if ln.rstrip("\r\n").strip() == end_marker(name)]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise MlconnectError(
            f"the mlconnect block for {name!r} in the ssh config is damaged "
            f"({len(begins)} start and {len(ends)} end markers)",
            f"fix or delete the lines between `{begin_marker(name)}` and `{end_marker(name)}` by hand, then rerun")
    return begins[0], ends[0]


def _insert_index(lines: list[str], name: str) -> tuple[int, list[str]]:
    """Where a new block goes: before the first Host/Match section that also applies to ``name``."""
    notes = []
    for i, ln in enumerate(lines):
        kw, args = _keyword(ln)
        is_match = kw == "match"
        if (kw == "host" and _host_patterns_match(args, name)) or is_match:
            if kw == "host" and name in args:
                notes.append(f"an existing `Host {' '.join(args)}` section (line {i + 1}) also applies to "
                             f"{name}; its options that ours do not set (LocalForward, ...) still apply — "
                             "remove it if it is an old hand-written entry")
            # Keep a comment that sits directly on top of that section with it.
            while i > 0 and lines[i - 1].strip().startswith("#"):
                i -= 1
            return i, notes
    return len(lines), notes


def merge_block(text: str, name: str, block: str) -> tuple[str, list[str]]:
    """The new file text: ``block`` replaces our old block, or is inserted; other bytes untouched."""
    lines = text.splitlines(keepends=True)
    found = _find_block(lines, name)
    if found is not None:
        b, e = found
        return "".join(lines[:b]) + block + "".join(lines[e + 1:]), []
    idx, notes = _insert_index(lines, name)
    before, after = "".join(lines[:idx]), "".join(lines[idx:])
    nl = "\r\n" if "\r\n" in text else "\n"
    if before and not before.endswith("\n"):
        before += nl  # the last line had no newline; the block must start on its own line
    sep_before = nl if before.strip() and not before.endswith(nl + nl) else ""
    sep_after = nl if after.strip() else ""
    return before + sep_before + block + sep_after + after, notes


# ---- checking with ssh -G -----------------------------------------------------------------------

def effective_options(config: Path, alias: str, timeout: float = 15) -> dict[str, list[str]]:
    """``ssh -G -F config alias`` as {option: [values]} (ssh resolves, nothing is dialled)."""
    cp = _run(["ssh", "-G", "-F", str(config), alias], timeout=timeout)
    if cp.returncode != 0:
        raise MlconnectError(f"ssh rejects the resulting config: {_last(cp.stderr)}",
                             "fix the line ssh names (outside mlconnect's block); nothing was written")
    out: dict[str, list[str]] = {}
    for line in cp.stdout.splitlines():
        k, _, v = line.partition(" ")
        out.setdefault(k.lower(), []).append(v.strip())
    return out


def _expected(hostname: str, port: int, user: str, key: Path) -> dict[str, str]:
    return {"hostname": hostname, "port": str(port), "user": user, "identitiesonly": "yes",
            "forwardagent": "no", "serveraliveinterval": "15", "serveralivecountmax": "3"}


def check_effective(config: Path, name: str, hostname: str, port: int, user: str,
                    key: Path) -> tuple[list[str], list[str]]:
    """(mismatches between what ssh will use and what the block says, softer warnings)."""
    eff = effective_options(config, name)
    problems = []
    for k, want in _expected(hostname, port, user, key).items():
        got = (eff.get(k) or ["?"])[0]
        if got.lower() != want.lower():
            problems.append(f"{k} would be {got!r}, not {want!r}")
    ids = [os.path.expanduser(v) for v in eff.get("identityfile", [])]
    if ids and os.path.abspath(ids[0]) != os.path.abspath(str(key)):
        problems.append(f"identityfile would be {ids[0]!r} first, not {str(key)!r}")
    warnings = []
    if eff.get("localforward"):  # cumulative in ssh: another section's forwards cannot be switched off here
        warnings.append(f"another section of the ssh config adds LocalForward {eff['localforward'][0]} to "
                        f"{name}: every interactive ssh will hold that port; consider removing it "
                        "(mlconnect opens tunnels on demand)")
    return problems, warnings


# ---- the whole step -----------------------------------------------------------------------------

def setup_client(*, name: str, hostname: str, port: int = 2222, user: str | None = None,
                 ssh_config: Path | None = None, key: Path | None = None, verify: bool = True) -> ClientResult:
    user = user or getpass.getuser()
    validate_inputs(name, hostname, port, user)
    config = Path(os.path.expanduser(str(ssh_config))) if ssh_config else default_ssh_config()
    # A dotfiles manager may symlink the config: write through to the real file.
    real = Path(os.path.realpath(config))
    key = Path(os.path.expanduser(str(key))) if key else real.parent / f"{name}_ed25519"
    key = Path(os.path.abspath(key))
    if verify and shutil.which("ssh") is None:
        raise MlconnectError("ssh is not installed on this machine", "install the OpenSSH client first")

    public_key, created = ensure_key(key, f"mlconnect {name} {getpass.getuser()}")
    raw = real.read_bytes() if real.exists() else b""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MlconnectError(f"{real} is not UTF-8 text", "fix its encoding; nothing was written") from None
    nl = "\r\n" if "\r\n" in text else "\n"
    block = render_block(name, hostname, port, user, key, newline=nl)
    new_text, notes = merge_block(text, name, block)
    changed = new_text != text
    backup = None
    if changed:
        real.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = (real.stat().st_mode & 0o777) if real.exists() else 0o600
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".tmp", dir=real.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(new_text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, mode & ~0o022)  # ssh refuses a config others can write
            if verify:
                problems, soft = check_effective(Path(tmp), name, hostname, port, user, key)
                notes += soft
                if problems:
                    raise MlconnectError(
                        f"{config}: an earlier line overrides the mlconnect block for {name}: "
                        + "; ".join(problems),
                        "ssh keeps the first value it reads: move global options (lines before the first Host) "
                        "into a `Host *` section at the end of the file, then rerun; nothing was written")
            if real.exists():
                backup = real.with_name(f"{real.name}.mlconnect-backup-{time.strftime('%Y%m%d-%H%M%S')}")
                n = 1
                while backup.exists():
                    backup = backup.with_name(f"{backup.name.split('~')[0]}~{n}")
                    n += 1
                shutil.copy2(real, backup)
            os.replace(tmp, real)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        fsync_dir(real.parent)
    elif verify:
        problems, soft = check_effective(real, name, hostname, port, user, key)
        notes += soft
        if problems:
            notes.append(f"{config}: ssh will not use the block's values for {name}: " + "; ".join(problems))
    return ClientResult(ssh_config=config, key=key, public_key=public_key, key_created=created, changed=changed,
                        backup=backup, block=block, server_command=server_command(public_key, port),
                        warnings=notes)


def server_command(public_key: str, port: int) -> str:
    """The one command to run on the box (a copy-paste line for bash). ``--apply`` writes into /etc/ssh,
    so it runs under sudo; sudo's secure_path would not find a venv's mlconnect, hence the full path."""
    q = f'"{public_key}"' if not any(c in public_key for c in '"$`\\!') else shlex.quote(public_key)
    return f'sudo "$(command -v mlconnect)" setup server --port {port} --authorized-key {q} --apply'
