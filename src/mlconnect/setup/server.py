"""`mlconnect setup server`: key-only sshd on the Linux / WSL2 box, validated before it is installed.

What the manual guide did and why this is different:

- ``sed`` on ``#PasswordAuthentication yes`` silently does nothing when the line reads differently,
  and PasswordAuthentication defaults to yes. Here the settings live in an early-sorting drop-in,
  ``/etc/ssh/sshd_config.d/00-mlconnect.conf`` (sshd keeps the FIRST value it reads, and Debian /
  Ubuntu include that folder at the top of sshd_config), and the *effective* values are read back
  with ``sshd -T`` before anything is installed.
- A candidate config is staged in a temp folder (a copy of the main config whose Include points at
  a copy of sshd_config.d holding the new drop-in) and checked with ``sshd -t``. A failing config is
  never installed; the old drop-in stays.
- Lockout guards: nothing is applied when the effective config would not let ``--user`` in with a key
  (no key in authorized_keys, root with PermitRootLogin no, AllowUsers without the user).
- ``sudo service ssh start`` in ``.bashrc`` is replaced by systemd (``[boot] systemd=true`` in
  /etc/wsl.conf) so sshd starts with the distro.

The default is a dry run. ``--prefix`` installs under another root so tests never touch /etc/ssh.
"""

from __future__ import annotations

import getpass
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlconnect.errors import MlconnectError, UsageError
from mlconnect.fileio import atomic_write_text
from mlconnect.setup.keys import install_keys, key_id, read_keys_arg
from mlconnect.wsl import is_wsl

DROPIN_NAME = "00-mlconnect.conf"

WSL_IDLE_NOTE = (
    "WSL2 stops this distro (sshd and every run with it) about 15 s after the last Windows-side WSL "
    "program exits; Linux processes do not count. Keep it up from Windows: `mlconnect setup windows` "
    "writes a keep-alive task, and with --no-idle-timeout [general] instanceIdleTimeout=-1 and "
    "[wsl2] vmIdleTimeout=-1 for %UserProfile%\\.wslconfig; then `wsl --shutdown` once. "
    "`mlconnect doctor` checks both."
)


@dataclass
class ServerReport:
    lines: list[str] = field(default_factory=list)
    installed: bool = False
    effective: dict[str, list[str]] = field(default_factory=dict)
    dropin: Path | None = None
    keys_added: int = 0


def render_dropin(port: int, user: str) -> str:
    return (
        "# Written by `mlconnect setup server`; rerunning it replaces this file.\n"
        "# sshd keeps the first value it reads, and this file is included before the rest of sshd_config.\n"
        f"Port {port}\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "PermitRootLogin no\n"
        "PubkeyAuthentication yes\n"
        "AuthenticationMethods publickey\n"
        f"AllowUsers {user}\n"
    )


# ---- staging and sshd -------------------------------------------------------------------------

def find_sshd() -> str:
    for c in (shutil.which("sshd"), "/usr/sbin/sshd"):
        if c and os.path.exists(c):
            return c
    raise MlconnectError("sshd is not installed", "install it: `sudo apt-get install -y openssh-server`")


def _stage(main: Path, dropin_dir: Path, dropin_text: str, stage: Path) -> Path:
    """A copy of the main config whose Include of sshd_config.d reads a staged copy of the folder."""
    sdir = stage / "sshd_config.d"
    sdir.mkdir()
    if dropin_dir.is_dir():
        for f in sorted(dropin_dir.iterdir()):
            if f.is_file() and f.name != DROPIN_NAME:
                shutil.copy2(f, sdir / f.name)
    (sdir / DROPIN_NAME).write_text(dropin_text, encoding="utf-8")
    out, included = [], False
    for line in main.read_text(encoding="utf-8").splitlines(keepends=True):
        words = line.split()
        if words and words[0].lower() == "include":
            new = []
            for w in words[1:]:
                absolute = w if w.startswith("/") else str(main.parent / w)
                if absolute.startswith(str(dropin_dir) + "/"):
                    w = str(sdir) + absolute[len(str(dropin_dir)):]
                    included = True
                new.append(w)
            line = "Include " + " ".join(new) + "\n"
        out.append(line)
    if not included:
        raise MlconnectError(
            f"{main} does not include {dropin_dir}/*.conf, so a drop-in would have no effect",
            f"add `Include {dropin_dir}/*.conf` as the FIRST line of {main} (newer Ubuntu has it), then rerun")
    staged = stage / "sshd_config"
    staged.write_text("".join(out), encoding="utf-8")
    return staged


def _unstage(text: str, stage: Path, etc_ssh: Path) -> str:
    return text.replace(str(stage), str(etc_ssh))


def sshd_effective(sshd: str, config: Path, user: str, timeout: float = 20) -> tuple[int, dict[str, list[str]], str]:
    argv = [sshd, "-T", "-f", str(config), "-C", f"user={user},host=localhost,addr=127.0.0.1"]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    values: dict[str, list[str]] = {}
    for line in cp.stdout.splitlines():
        k, _, v = line.partition(" ")
        values.setdefault(k.lower(), []).append(v.strip())
    return cp.returncode, values, cp.stderr


def _last(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _first(values: dict[str, list[str]], *keys: str) -> str:
    for k in keys:
        if values.get(k):
            return values[k][0]
    return "?"


def check_effective(values: dict[str, list[str]], port: int, user: str) -> tuple[list[str], list[str]]:
    """(problems that block installing, warnings)."""
    problems, warnings = [], []
    want = {("passwordauthentication",): "no",
            ("kbdinteractiveauthentication", "challengeresponseauthentication"): "no",
            ("pubkeyauthentication",): "yes", ("authenticationmethods",): "publickey"}
    for keys, v in want.items():
        got = _first(values, *keys)
        if got.lower() != v:
            problems.append(f"{keys[0]} would be {got!r}, not {v!r}")
    ports = values.get("port", [])
    if str(port) not in ports:
        problems.append(f"port would be {', '.join(ports) or '?'}, not {port}")
    elif len(ports) > 1:
        warnings.append(f"sshd also listens on port(s) {', '.join(p for p in ports if p != str(port))} "
                        "(a Port line elsewhere in sshd_config; Port adds up, it cannot be overridden)")
    allow = " ".join(values.get("allowusers", [])).split()
    if user not in allow:
        problems.append(f"allowusers would be {' '.join(allow) or '(anyone)'}, without {user}")
    prl = _first(values, "permitrootlogin")
    if user == "root":
        if prl == "no":
            problems.append("root would not be allowed to log in (PermitRootLogin no) — that is a lockout")
        else:
            warnings.append(f"logging in as root (PermitRootLogin {prl}); prefer a normal user with sudo")
    elif prl != "no":
        problems.append(f"permitrootlogin would be {prl!r}, not 'no'")
    return problems, warnings


# ---- paths under --prefix -----------------------------------------------------------------------

def _under(prefix: Path, path: str) -> Path:
    return Path(path) if str(prefix) == "/" else prefix / path.lstrip("/")


# ---- /etc/wsl.conf ------------------------------------------------------------------------------

def merge_wsl_conf(text: str) -> str:
    """Set ``systemd=true`` under ``[boot]``, keeping every other line (comments included)."""
    lines = text.splitlines(keepends=True)
    section, boot_at, set_at = None, None, None
    for i, ln in enumerate(lines):
        s = ln.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip().lower()
            if section == "boot" and boot_at is None:
                boot_at = i
            continue
        if section == "boot" and re.match(r"^\s*systemd\s*=", ln):
            set_at = i
    if set_at is not None:
        if re.match(r"^\s*systemd\s*=\s*true\s*$", lines[set_at], re.IGNORECASE):
            return text
        lines[set_at] = "systemd=true\n"
        return "".join(lines)
    if boot_at is not None:
        lines.insert(boot_at + 1, "systemd=true\n")
        return "".join(lines)
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + "[boot]\nsystemd=true\n"


# ---- service ------------------------------------------------------------------------------------

def _restart_sshd() -> list[str]:
    """Make the running sshd use the new config; lines saying what happened."""
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        socket = subprocess.run(["systemctl", "is-active", "--quiet", "ssh.socket"], timeout=15,
                                stdin=subprocess.DEVNULL, capture_output=True).returncode == 0
        steps = [["systemctl", "daemon-reload"]]
        steps += [["systemctl", "restart", "ssh.socket"]] if socket else [["systemctl", "enable", "ssh"],
                                                                          ["systemctl", "restart", "ssh"]]
    elif shutil.which("service"):
        steps = [["service", "ssh", "restart"]]
    else:
        return ["warning: no systemctl or service here: restart sshd yourself"]
    out = []
    for argv in steps:
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
            ok, why = cp.returncode == 0, _last(cp.stderr)
        except (OSError, subprocess.TimeoutExpired) as exc:
            ok, why = False, str(exc)
        out.append(f"ran: {' '.join(argv)}" if ok else f"warning: `{' '.join(argv)}` failed ({why}); run it yourself")
        if not ok:
            break
    return out


# ---- the whole step -----------------------------------------------------------------------------

def setup_server(*, port: int = 2222, authorized_key: str | None = None, user: str | None = None,
                 apply: bool = False, prefix: str | os.PathLike[str] = "/", wsl: bool | None = None,
                 restart: bool | None = None) -> ServerReport:
    if not 0 < port < 65536:
        raise UsageError(f"invalid --port {port}", "give a TCP port between 1 and 65535 (2222 for WSL2)")
    user = user or os.environ.get("SUDO_USER") or getpass.getuser()
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"there is no user {user!r} on this machine",
                         f"create it (`sudo adduser {user}`) or pass --user with your login name") from None
    root = Path(os.path.abspath(os.path.expanduser(str(prefix))))
    etc_ssh = _under(root, "/etc/ssh")
    main, dropin_dir = etc_ssh / "sshd_config", etc_ssh / "sshd_config.d"
    dropin = dropin_dir / DROPIN_NAME
    if not main.is_file():
        raise MlconnectError(f"{main} does not exist: openssh-server is not installed",
                             "install it: `sudo apt-get install -y openssh-server`, then rerun")
    if apply and str(root) == "/" and os.geteuid() != 0:
        raise MlconnectError("--apply changes /etc/ssh and needs root",
                             'rerun with sudo: sudo "$(command -v mlconnect)" setup server ... --apply')
    sshd = find_sshd()
    keys = read_keys_arg(authorized_key)
    auth = _under(root, pw.pw_dir) / ".ssh" / "authorized_keys"
    existing = auth.read_text(encoding="utf-8") if auth.is_file() else ""
    have = {k for k in (key_id(ln) for ln in existing.splitlines()) if k}
    adding = [k for k in keys if key_id(k) not in have]
    if not have and not keys:
        raise MlconnectError(f"no key in {auth} and no --authorized-key: with password login off nobody could "
                             "log in", "pass --authorized-key with the line `mlconnect setup client` printed")

    text = render_dropin(port, user)
    r = ServerReport(dropin=dropin)
    mode = "applying" if apply else "dry run (nothing changes; add --apply)"
    r.lines.append(f"mlconnect setup server: {mode}")
    r.lines.append(f"drop-in {dropin}:")
    r.lines += ["    " + ln for ln in text.splitlines() if not ln.startswith("#")]
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd -t insists on its privilege-separation dir

    with tempfile.TemporaryDirectory(prefix="mlconnect-sshd-") as tmp:
        stage = Path(tmp)
        staged_main = _stage(main, dropin_dir, text, stage)
        cp = subprocess.run([sshd, "-t", "-f", str(staged_main)], capture_output=True, text=True, timeout=20,
                            stdin=subprocess.DEVNULL)
        if cp.returncode != 0:
            raise MlconnectError(
                f"the new sshd config fails `sshd -t`: {_unstage(_last(cp.stderr), stage, etc_ssh)}",
                "nothing was installed and the current config stays; "
                + (f"fix the line named in {etc_ssh}, then rerun" if os.geteuid() == 0 or str(root) != "/"
                   else 'sshd needs root to read the host keys: rerun with sudo "$(command -v mlconnect)"'))
        rc, values, err = sshd_effective(sshd, staged_main, user)
        if rc != 0:
            raise MlconnectError(f"`sshd -T` failed on the new config: {_unstage(_last(err), stage, etc_ssh)}",
                                 "nothing was installed; fix the line named, then rerun")
    r.effective = values
    problems, warnings = check_effective(values, port, user)
    if problems:
        raise MlconnectError(f"sshd would not use the intended settings: {'; '.join(problems)}",
                             f"another line in {main} or {dropin_dir} sets them first (sshd keeps the first "
                             "value); fix it, then rerun; nothing was installed")
    r.lines.append("sshd -t: ok; effective values (sshd -T):")
    for k in ("port", "passwordauthentication", "kbdinteractiveauthentication", "pubkeyauthentication",
              "authenticationmethods", "permitrootlogin", "allowusers"):
        r.lines.append(f"    {k} {' '.join(values.get(k, ['?']))}")
    r.lines += [f"warning: {w}" for w in warnings]
    r.lines.append(f"authorized_keys {auth}: {len(adding)} key(s) to add, {len(have)} already there")

    use_wsl = is_wsl() if wsl is None else wsl
    wsl_conf = _under(root, "/etc/wsl.conf")
    wsl_old = wsl_conf.read_text(encoding="utf-8") if wsl_conf.is_file() else ""
    wsl_new = merge_wsl_conf(wsl_old) if use_wsl else wsl_old
    if use_wsl:
        r.lines.append(f"WSL2: {wsl_conf}: " + ("[boot] systemd=true already set" if wsl_new == wsl_old
                                                 else "set [boot] systemd=true (sshd starts with the distro)"))
        r.lines.append(WSL_IDLE_NOTE)

    if not apply:
        r.lines.append("dry run: nothing was changed; rerun with --apply to install")
        return r

    old = dropin.read_text(encoding="utf-8") if dropin.is_file() else None
    if old != text:
        if old is not None:  # a name that does not match *.conf, so sshd never reads the backup
            backup = dropin.with_name(f"{DROPIN_NAME}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
            shutil.copy2(dropin, backup)
            r.lines.append(f"backup of the old drop-in: {backup}")
        atomic_write_text(dropin, text)
        os.chmod(dropin, 0o644)
        r.lines.append(f"installed {dropin}")
    else:
        r.lines.append(f"{dropin} already up to date")
    r.installed = True
    r.keys_added = install_keys(auth, keys, pw.pw_uid, pw.pw_gid)
    r.lines.append(f"authorized_keys: added {r.keys_added} key(s); {auth.parent} 700, {auth.name} 600")
    if use_wsl and wsl_new != wsl_old:
        backup = wsl_conf.with_name(f"wsl.conf.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        if wsl_conf.exists():
            shutil.copy2(wsl_conf, backup)
        else:  # an empty backup says "there was none": undo.ps1 then removes the file
            backup.touch()
        atomic_write_text(wsl_conf, wsl_new)
        os.chmod(wsl_conf, 0o644)
        r.lines.append(f"wrote {wsl_conf}; run `wsl --shutdown` in Windows once so systemd starts")
    if restart if restart is not None else str(root) == "/":
        r.lines += _restart_sshd()
    r.lines.append("no `sudo service ssh start` in .bashrc is needed (remove it if you added one)")
    return r
