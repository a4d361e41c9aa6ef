"""The multiplexing control master: probe its socket, and evict one that is wedged.

Connections are multiplexed (``ControlMaster=auto``) through sockets in a 0700 directory of ours. A
wedged master (stopped, or stuck on a dead network) would make every later command hang in the mux
handshake, where ``ConnectTimeout`` does not apply; so a master that does not say hello within
``MASTER_PROBE_S`` is killed by the pid of the process holding its socket (never by name) and the
socket removed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

MASTER_PROBE_S = 2.0  # a healthy master answers its socket in well under a millisecond


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def probe_master(path: str, timeout: float = MASTER_PROBE_S) -> tuple[str, int | None]:
    """("none" | "ok" | "stale" | "wedged", master pid). A live master sends MUX hello on accept."""
    if not os.path.exists(path):
        return "none", None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return "stale", None
        except (TimeoutError, OSError):
            return "wedged", None
        pid = _peer_pid(s)
        try:
            data = s.recv(8)
        except TimeoutError:
            return "wedged", pid
        except OSError:
            return "stale", pid
        return ("ok" if data else "stale"), pid
    finally:
        s.close()


def _peer_pid(s: socket.socket) -> int | None:
    """The pid of the process listening on a unix socket, from the kernel (Linux / macOS)."""
    try:
        if sys.platform.startswith("linux"):
            pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                               struct.calcsize("3i")))
            return pid or None
        if sys.platform == "darwin":
            sol_local, local_peerpid = 0, 2
            (pid,) = struct.unpack("i", s.getsockopt(sol_local, local_peerpid, 4))
            return pid or None
    except OSError:
        return None
    return None


def socket_holders(path: str) -> list[int]:
    """Pids of our processes holding the listening unix socket at ``path`` (by inode, not by name)."""
    try:
        if Path("/proc/net/unix").exists():
            inode = None
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
                parts = line.split()
                # The listening socket only (flag __SO_ACCEPTCON): the master's accepted connections carry
                # the same path, and one that is closing has no holder left by the time we look.
                if (len(parts) >= 8 and int(parts[3], 16) & 0x10000
                        and (parts[7] == path or parts[7].startswith(path + "."))):  # bound as tmp
                    inode = parts[6]
            if inode is None:
                return []
            target, found = f"socket:[{inode}]", []
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    if d.stat().st_uid != os.getuid():
                        continue
                    if any(os.readlink(fd) == target for fd in (d / "fd").iterdir()):
                        found.append(int(d.name))
                except OSError:
                    continue
            return found
        cp = subprocess.run(["lsof", "-t", path], capture_output=True, text=True, timeout=5)
        return [int(x) for x in cp.stdout.split() if x.isdigit()]
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return []


def is_our_ssh(pid: int) -> bool:
    """Only ever kill an ssh process of ours, checked by pid (the pid came from the socket)."""
    try:
        if Path(f"/proc/{pid}").exists():
            st = os.stat(f"/proc/{pid}")
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            return st.st_uid == os.getuid() and comm == "ssh"
        cp = subprocess.run(["ps", "-o", "uid=,comm=", "-p", str(pid)], capture_output=True, text=True,
                            timeout=5)
        uid, _, comm = cp.stdout.strip().partition(" ")
        return uid.strip() == str(os.getuid()) and os.path.basename(comm.strip()) == "ssh"
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return False


def evict_if_wedged(path: str) -> bool:
    """Kill the master at ``path`` when it holds its socket but does not answer; True when one was evicted."""
    state, _pid = probe_master(path)
    if state == "stale":
        _unlink(path)
        return False
    if state != "wedged":
        return False
    # ControlPersist forks after listen(): the kernel's peer pid is the parent that went on to be
    # the first mux client, not the master. Find the process holding the socket's inode instead.
    for pid in socket_holders(path):
        if is_our_ssh(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # a stopped process still receives SIGKILL
    _unlink(path)
    return True
