"""`mlconnect setup server --prefix`: the drop-in passes a real `sshd -t`, a real sshd started with it on
127.0.0.1 takes the key and refuses password / keyboard-interactive, and a broken config is never installed.

Everything lives under the test's own prefix (main sshd_config, throwaway host key, the user's
authorized_keys under <prefix><home>); /etc/ssh is never read or written. When the tests run as root,
the test's own main config puts ``PermitRootLogin prohibit-password`` BEFORE its Include line (sshd
keeps the first value), standing in for "a user allowed to log in"; the generated drop-in still says
``PermitRootLogin no``, and a main config without that line is refused as a lockout.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import require_tool

from support.sshd import free_port

pytestmark = pytest.mark.timeout(120)
USER = getpass.getuser()
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"



def _mlc(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOME": str(tmp / "home"), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)


class Box:
    def __init__(self, tmp: Path, root_override: bool = True, before: str = "", after: str = "") -> None:
        self.tmp, self.prefix = tmp, tmp / "root"
        self.etc = self.prefix / "etc" / "ssh"
        (self.etc / "sshd_config.d").mkdir(parents=True)
        (tmp / "home").mkdir(exist_ok=True)
        self.hostkey = self.etc / "ssh_host_ed25519_key"
        self.key = tmp / "user_ed25519"
        for k, c in ((self.hostkey, "host"), (self.key, "user")):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", c, "-f", str(k)], check=True)
        self.pub = Path(f"{self.key}.pub").read_text().strip()
        self.main = self.etc / "sshd_config"
        override = "PermitRootLogin prohibit-password\n" if USER == "root" and root_override else ""
        self.main.write_text(
            f"# the test's own main config\n{override}{before}"
            f"Include {self.etc}/sshd_config.d/*.conf\n"
            f"ListenAddress 127.0.0.1\nHostKey {self.hostkey}\nPidFile {self.tmp / 'sshd.pid'}\nUsePAM no\n"
            f"StrictModes no\nAuthorizedKeysFile {self.prefix}%h/.ssh/authorized_keys\nLogLevel ERROR\n{after}")
        self.dropin = self.etc / "sshd_config.d" / "00-mlconnect.conf"
        self.auth = self.prefix / pwd.getpwnam(USER).pw_dir.lstrip("/") / ".ssh" / "authorized_keys"

    def setup(self, port: int, *extra: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        return _mlc(["setup", "server", "--port", str(port), "--authorized-key", key or self.pub, "--user", USER,
                     "--prefix", str(self.prefix), *extra], self.tmp)

    def effective(self) -> dict[str, str]:
        cp = subprocess.run([SSHD, "-T", "-f", str(self.main), "-C", f"user={USER},host=localhost,addr=127.0.0.1"],
                            capture_output=True, text=True, check=True, timeout=20)
        return dict(line.split(" ", 1) for line in cp.stdout.splitlines() if " " in line)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    require_tool("sshd", "ssh", "ssh-keygen")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)
    return Box(tmp_path)


def _ssh(box: Box, port: int, *opts: str) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-F", "/dev/null", "-o", f"UserKnownHostsFile={box.tmp / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            *opts, "-p", str(port), f"{USER}@127.0.0.1", "true"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_dry_run_changes_nothing(box: Box):
    port = free_port()
    cp = box.setup(port)
    assert cp.returncode == 0, cp.stderr
    assert "dry run" in cp.stdout and "sshd -t: ok" in cp.stdout
    assert "passwordauthentication no" in cp.stdout and f"port {port}" in cp.stdout
    assert not box.dropin.exists() and not box.auth.exists()


def test_apply_real_sshd_takes_the_key_and_refuses_passwords(box: Box):
    port = free_port()
    cp = box.setup(port, "--apply")
    assert cp.returncode == 0, cp.stderr
    text = box.dropin.read_text()
    for line in (f"Port {port}", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no",
                 "PubkeyAuthentication yes", "AuthenticationMethods publickey", f"AllowUsers {USER}"):
        assert f"\n{line}\n" in text
    assert subprocess.run([SSHD, "-t", "-f", str(box.main)], capture_output=True, timeout=20).returncode == 0
    eff = box.effective()
    assert eff["port"] == str(port)
    assert eff["passwordauthentication"] == "no" and eff["kbdinteractiveauthentication"] == "no"
    assert eff["pubkeyauthentication"] == "yes" and eff["authenticationmethods"] == "publickey"
    assert eff["allowusers"] == USER
    assert (box.auth.stat().st_mode & 0o777) == 0o600 and (box.auth.parent.stat().st_mode & 0o777) == 0o700
    assert box.auth.read_text().strip() == box.pub

    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(box.main)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                assert time.monotonic() < deadline, "sshd did not listen"
                time.sleep(0.05)
        ok = _ssh(box, port, "-i", str(box.key), "-o", "IdentitiesOnly=yes")
        assert ok.returncode == 0, ok.stderr
        pw = _ssh(box, port, "-o", "PreferredAuthentications=password,keyboard-interactive",
                  "-o", "PubkeyAuthentication=no")
        assert pw.returncode == 255 and "Permission denied (publickey)" in pw.stderr, pw.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)

    # Rerun: idempotent, no duplicate key.
    again = box.setup(port, "--apply")
    assert again.returncode == 0, again.stderr
    assert "already up to date" in again.stdout and "added 0 key(s)" in again.stdout
    assert box.auth.read_text().count(box.pub.split()[1]) == 1


@pytest.mark.parametrize("where", ["main", "other-dropin"])
def test_broken_config_is_never_installed(box: Box, where: str):
    old_port, new_port = free_port(), free_port()
    assert box.setup(old_port, "--apply").returncode == 0
    old = box.dropin.read_text()
    if where == "main":
        box.main.write_text(box.main.read_text() + "NoSuchDirective yes\n")
    else:
        (box.etc / "sshd_config.d" / "50-other.conf").write_text("PasswordAuthentication maybe\n")
    cp = box.setup(new_port, "--apply")
    assert cp.returncode == 1
    err = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: the new sshd config fails `sshd -t`"), cp.stderr
    assert "mlconnect-sshd-" not in err[0]  # staged paths are reported as the real ones
    assert box.dropin.read_text() == old and f"Port {old_port}" in old
    assert sorted(p.name for p in box.dropin.parent.iterdir()) == sorted(
        ["00-mlconnect.conf"] + (["50-other.conf"] if where != "main" else []))


def test_earlier_line_that_wins_is_refused(tmp_path: Path):
    require_tool("sshd", "ssh-keygen")
    box = Box(tmp_path, before="PasswordAuthentication yes\n")  # before the Include: sshd keeps this one
    cp = box.setup(free_port(), "--apply")
    assert cp.returncode == 1 and "passwordauthentication would be 'yes'" in cp.stderr, cp.stderr
    assert not box.dropin.exists() and not box.auth.exists()


@pytest.mark.skipif(USER != "root", reason="the lockout case is about logging in as root")
def test_root_with_permitrootlogin_no_is_a_lockout(tmp_path: Path):
    require_tool("sshd", "ssh-keygen")
    box = Box(tmp_path, root_override=False)
    cp = box.setup(free_port(), "--apply")
    assert cp.returncode == 1 and "lockout" in cp.stderr, cp.stderr
    assert not box.dropin.exists()


def test_bad_key_and_no_key_are_refused(box: Box):
    cp = box.setup(free_port(), "--apply", key="ssh-ed25519 notbase64 x@y")
    assert cp.returncode == 2 and "cannot read the key" in cp.stderr, cp.stderr
    cp = _mlc(["setup", "server", "--port", "2222", "--user", USER, "--prefix", str(box.prefix), "--apply"], box.tmp)
    assert cp.returncode == 1 and "nobody could log in" in cp.stderr, cp.stderr
    assert not box.dropin.exists()


def test_wsl_conf_merge_keeps_other_lines(box: Box):
    from mlconnect.setup.server import WSL_IDLE_NOTE, merge_wsl_conf, setup_server

    wsl = box.prefix / "etc" / "wsl.conf"
    wsl.write_text("# mine\n[automount]\nenabled = true\n\n[boot]\ncommand = echo hi\n")
    r = setup_server(port=free_port(), authorized_key=box.pub, user=USER, apply=True, prefix=box.prefix,
                     wsl=True, restart=False)
    assert wsl.read_text() == "# mine\n[automount]\nenabled = true\n\n[boot]\nsystemd=true\ncommand = echo hi\n"
    assert WSL_IDLE_NOTE in r.lines and "vmIdleTimeout" in WSL_IDLE_NOTE
    assert merge_wsl_conf("") == "[boot]\nsystemd=true\n"
    assert merge_wsl_conf("[boot]\nsystemd = false\n") == "[boot]\nsystemd=true\n"
    assert merge_wsl_conf("[network]\nhostname = x\n") == "[network]\nhostname = x\n\n[boot]\nsystemd=true\n"
    assert merge_wsl_conf("[boot]\nsystemd=true\n") == "[boot]\nsystemd=true\n"
