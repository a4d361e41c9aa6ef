"""A throwaway OpenSSH server on 127.0.0.1 for the runs tests (real sshd, real keys, loopback only).

The transport part ships the project-wide ``sshd_host`` fixture; this small one keeps the runs
tests runnable on their own. Everything lives in a temp folder: host key, user key, its own ssh
config file (``--ssh-config``) and known_hosts, so the real ``~/.ssh`` is never read or written.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from support.sshd import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@dataclass
class Sshd:
    alias: str
    port: int
    ssh_config: Path
    key: Path
    proc: subprocess.Popen
    log: Path

    def client_pids(self, control_dir: str) -> list[int]:
        return ssh_client_pids(self.ssh_config, control_dir)



def start_sshd(tmp: Path, alias: str = "gpubox") -> Sshd:
    tmp.mkdir(parents=True, exist_ok=True)
    os.chmod(tmp, 0o700)
    host_key, user_key = tmp / "host_ed25519", tmp / "user_ed25519"
    for k in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(k)], check=True)
    auth = tmp / "authorized_keys"
    auth.write_text((tmp / "user_ed25519.pub").read_text())
    auth.chmod(0o600)
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation dir sshd insists on
    port = free_port()
    cfg = tmp / "sshd_config"
    cfg.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {auth}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "MaxSessions 50\nMaxStartups 50\nSubsystem sftp internal-sftp\nLogLevel ERROR\n")
    log = tmp / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=open(log, "ab"),  # noqa: SIM115
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {log.read_text()}") from None
            time.sleep(0.05)
    ssh_config = tmp / "ssh_config"
    ssh_config.write_text(
        f"Host {alias}\n  HostName 127.0.0.1\n  Port {port}\n  User {getpass.getuser()}\n"
        f"  IdentityFile {user_key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {tmp / 'known_hosts'}\n"
        "  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n")
    return Sshd(alias=alias, port=port, ssh_config=ssh_config, key=user_key, proc=proc, log=log)


def stop_sshd(s: Sshd, control_dir: str | None = None) -> None:
    """Stop sshd; with ``control_dir``, first end our ssh clients there (a ControlPersist master outlives
    the commands that opened it) and remove the directory."""
    if control_dir:
        for pid in s.client_pids(control_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        shutil.rmtree(control_dir, ignore_errors=True)
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        try:
            s.proc.wait(5)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()


def ssh_client_pids(ssh_config: Path, control_dir: str) -> list[int]:
    """Pids of our ssh clients: commands using ``ssh_config``, and the multiplexing masters (which
    retitle themselves ``ssh: <control path> [mux]``) in our own ``control_dir``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        first = cmd[0].decode(errors="replace").strip() if cmd else ""  # titles are padded
        ours = os.path.basename(first) == "ssh" and str(ssh_config).encode() in cmd
        master = first.startswith(f"ssh: {str(control_dir).rstrip('/')}/") and first.endswith("[mux]")
        if ours or master:
            out.append(int(d.name))
    return out


def kill_ssh_clients(box: dict) -> int:
    """SIGKILL every ssh client of this box's control dir (a dropped Wi-Fi, a closed laptop): how many."""
    pids = box["sshd"].client_pids(box["env"]["MLCONNECT_CONTROL_DIR"])
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)
