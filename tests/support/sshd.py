"""A real OpenSSH sshd on 127.0.0.1 with throwaway host and user keys, for integration tests.

Runs as the current user, key-only, with everything (keys, authorized_keys, known_hosts, the ssh
config the client uses) inside one temp directory; the real ~/.ssh is never read or written.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mlconnect-test", "-f", str(path)],
                   check=True, capture_output=True)


@dataclass
class SshdHost:
    alias: str
    port: int
    dir: Path
    ssh_config: Path
    user_key: Path
    host_key: Path
    known_hosts: Path
    proc: subprocess.Popen

    def stop(self) -> None:
        # sshd -D's per-connection children outlive the listener: end the whole process group.
        import contextlib
        import signal
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def write_client_config(self, path: Path, *, alias: str | None = None, port: int | None = None,
                            identity: Path | None = None) -> Path:
        """An ssh config with one Host alias pointing at this sshd (or a variation for error tests)."""
        user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                        text=True).stdout.strip()
        path.write_text(
            f"Host {alias or self.alias}\n"
            f"  HostName 127.0.0.1\n  Port {port or self.port}\n  User {user}\n"
            f"  IdentityFile {identity or self.user_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n"
        )
        return path


def start_sshd(tmp: Path, alias: str = "mlc-test") -> SshdHost:
    tmp.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    host_key, user_key = tmp / "host_ed25519", tmp / "user_ed25519"
    keygen(host_key)
    keygen(user_key)
    auth = tmp / "authorized_keys"
    auth.write_text((tmp / "user_ed25519.pub").read_text())
    auth.chmod(0o600)
    port = free_port()
    cfg = tmp / "sshd_config"
    cfg.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\nPidFile {tmp}/sshd.pid\n"
        f"AuthorizedKeysFile {auth}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
        "AllowTcpForwarding local\nX11Forwarding no\nMaxSessions 50\nMaxStartups 50\n"
        "Subsystem sftp internal-sftp\nLogLevel ERROR\n"
    )
    with open(tmp / "sshd.log", "wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {(tmp / 'sshd.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    host = SshdHost(alias=alias, port=port, dir=tmp, ssh_config=tmp / "ssh_config", user_key=user_key,
                    host_key=host_key, known_hosts=tmp / "known_hosts", proc=proc)
    host.write_client_config(host.ssh_config)
    return host
