"""SSH local forwards: ``-L 127.0.0.1:<local>:127.0.0.1:<remote>``, next free port when busy.

A tunnel gets its own connection (ControlMaster=no) so that its lifetime is our foreground process:
closing it ends exactly this forward, never the shared master or the service on the host.

Every way the foreground command ends takes its ``ssh -N`` with it, or the local port would keep
answering for a command that is gone: Ctrl-C, SIGTERM and SIGHUP (terminal closed) unwind through
``Tunnel.close`` (``signals_interrupt``); the parent's SIGKILL cannot be caught, so the ssh child is
guarded from outside: on Linux the kernel sends it SIGTERM when we die (``PR_SET_PDEATHSIG``); elsewhere
(macOS) a tiny watchdog holding a pipe from us sees EOF when we die, however we die, and ends the ssh.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlconnect.errors import RemoteError
from mlconnect.interrupt import signals_interrupt
from mlconnect.ports import free_port_from, port_listening
from mlconnect.remote.failures import classify_ssh_failure
from mlconnect.remote.ssh import Target

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# The watchdog: blocks on our pipe; EOF means we are gone. It only kills a process that is still an ssh
# (checked by name for that pid), so a recycled pid is never hit.
_WATCHDOG_SH = 'read _; case "$(ps -o comm= -p "$1" 2>/dev/null)" in *ssh) kill -TERM "$1";; esac'


def guard_mode() -> str:
    """``pdeathsig`` on Linux, ``watchdog`` elsewhere; MLCONNECT_TUNNEL_GUARD picks one (tests cover both)."""
    mode = os.environ.get("MLCONNECT_TUNNEL_GUARD", "")
    if mode in ("pdeathsig", "watchdog"):
        return mode
    return "pdeathsig" if sys.platform.startswith("linux") else "watchdog"


def _pdeathsig_preexec() -> Callable[[], None]:
    """A preexec_fn that makes the kernel SIGTERM the child when this process dies.

    prctl is resolved here, before the fork: the child only calls it. PDEATHSIG follows the *thread*
    that forked, so tunnels are opened from the thread that holds them (the CLI's main thread).
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # we died between fork and prctl: nobody is left to forward for
            os._exit(1)

    return preexec


def forward_argv(target: Target, pairs: list[tuple[int, int]]) -> list[str]:
    """The ssh argv for local forwards (pure)."""
    extra = ["ControlMaster=no", "ControlPath=none", "ExitOnForwardFailure=yes"]
    argv = target.ssh_argv(extra)
    fw: list[str] = []
    for local, remote in pairs:
        fw += ["-L", f"127.0.0.1:{local}:127.0.0.1:{remote}"]
    return [argv[0], "-N", *fw, *argv[1:]]


@dataclass
class Tunnel:
    proc: subprocess.Popen
    pairs: list[tuple[int, int]]  # (local, remote)
    watchdog: subprocess.Popen | None = None

    def close(self) -> None:
        if self.watchdog is not None:  # first: once we reap the ssh its pid may be reused
            with contextlib.suppress(OSError):
                self.watchdog.kill()
            self.watchdog.wait(5)
            if self.watchdog.stdin:
                with contextlib.suppress(OSError):
                    self.watchdog.stdin.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _spawn(argv: list[str]) -> Tunnel:
    mode = guard_mode()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_pdeathsig_preexec() if mode == "pdeathsig" else None)
    watchdog = None
    if mode == "watchdog":
        # Its own session: a closed terminal's SIGHUP must not end the watchdog before it has acted.
        watchdog = subprocess.Popen(["/bin/sh", "-c", _WATCHDOG_SH, "mlconnect-tunnel-guard", str(proc.pid)],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
    return Tunnel(proc, [], watchdog)


def open_tunnel(target: Target, remote_ports: list[int], local_ports: list[int] | None = None,
                timeout: float = 15) -> Tunnel:
    """Forward each remote port (on the host's 127.0.0.1) to a local port: the wanted one or the next free."""
    wanted = local_ports or remote_ports
    for _attempt in range(5):  # a port can be taken between our check and ssh's bind: pick again
        pairs: list[tuple[int, int]] = []
        used: set[int] = set()
        for want, remote in zip(wanted, remote_ports):
            # reuse_addr: ssh binds its forwards with SO_REUSEADDR. Without it, the TIME_WAIT left by the
            # last request through a dropped tunnel made its own port look taken, and the redial moved to
            # the next port while the user's browser tab (and a test) still used the old one.
            p = free_port_from(want, skip=used, hint="close what uses them or pass --port", reuse_addr=True)
            used.add(p)
            pairs.append((p, remote))
        argv = forward_argv(target, pairs)
        tun = _spawn(argv)
        tun.pairs = pairs
        proc = tun.proc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if all(port_listening(lp) for lp, _ in pairs):
                return tun
            time.sleep(0.05)
        if proc.poll() is None:
            tun.close()
            raise RemoteError(f"the tunnel to {target.name} did not come up within {timeout:g} s",
                              f"check the connection with `ssh {target.name} true`")
        tun.close()  # ends the watchdog
        err = proc.stderr.read() if proc.stderr else ""
        if "Address already in use" in err or "cannot listen" in err:
            continue
        e = classify_ssh_failure(target, argv, proc.returncode, err)
        raise e or RemoteError(f"the tunnel to {target.name} failed: {err.strip()[-200:]}",
                               "check that AllowTcpForwarding is enabled in the host's sshd_config",
                               command=argv, returncode=proc.returncode, stderr=err)
    raise RemoteError("could not bind a local port for the tunnel", "close other tunnels or pass --port")


def hold_tunnel(target: Target, tunnel: Tunnel, log: Callable[[str], None],
                backoff: tuple[float, ...] = (0.5, 1, 2, 4, 8, 15)) -> None:
    """Keep ``tunnel``'s forwards up until Ctrl-C, SIGTERM or SIGHUP (KeyboardInterrupt propagates; the
    tunnel is closed).

    When its ssh ends (the laptop slept, Wi-Fi changed, the box rebooted) it is redialled with backoff
    on the same local ports, so an open browser tab carries on; a port taken meanwhile moves, and says so.
    """
    current = tunnel
    try:
        with signals_interrupt():
            while True:
                while current.proc.poll() is None:
                    time.sleep(0.5)
                current.close()  # ends its watchdog
                log(f"the tunnel to {target.name} dropped; reconnecting")
                wanted = current.pairs
                for attempt in itertools.count():
                    try:
                        current = open_tunnel(target, [r for _, r in wanted], [lp for lp, _ in wanted])
                        break
                    except RemoteError as exc:
                        delay = backoff[min(attempt, len(backoff) - 1)]
                        log(f"reconnect failed ({exc.message}); retrying in {delay:g} s")
                        time.sleep(delay)
                moved = [f"{old} -> {new}" for (old, _), (new, _) in zip(wanted, current.pairs) if old != new]
                log(f"reconnected to {target.name}"
                    + (f" (local port moved: {', '.join(moved)})" if moved else ""))
    finally:
        current.close()


def run_tunnel(target: Target, remote_ports: list[int], local_ports: list[int] | None, *,
               on_open: Callable[[Tunnel], None], log: Callable[[str], None]) -> None:
    """A foreground tunnel, as ``tunnel``, ``tensorboard`` and ``jupyter`` hold one: open the forwards,
    ``on_open(tunnel)`` (say where they are), hold them (redialling) until Ctrl-C, SIGTERM or SIGHUP, then
    return; the tunnel is closed however this ends, an error included."""
    with contextlib.suppress(KeyboardInterrupt), signals_interrupt():
        tunnel = open_tunnel(target, remote_ports, local_ports)
        try:
            on_open(tunnel)
            hold_tunnel(target, tunnel, log)
        finally:
            tunnel.close()
