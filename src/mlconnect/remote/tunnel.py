"""SSH local forwards: ``-L 127.0.0.1:<local>:127.0.0.1:<remote>``, next free port when busy.

A tunnel gets its own connection (ControlMaster=no) so that its lifetime is our foreground process:
Ctrl-C closes exactly this forward, never the shared master or the service on the host.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlconnect.errors import RemoteError
from mlconnect.ports import first_free_port, port_listening
from mlconnect.remote.ssh import Target, classify_ssh_failure


def next_free_port(start: int, tries: int = 50, skip: set[int] | None = None) -> int:
    p = first_free_port(start, skip=skip or set(), tries=tries)
    if p is not None:
        return p
    raise RemoteError(f"no free local port in {start}-{start + tries - 1}", "close what uses them or pass --port")


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

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def open_tunnel(target: Target, remote_ports: list[int], local_ports: list[int] | None = None,
                timeout: float = 15) -> Tunnel:
    """Forward each remote port (on the host's 127.0.0.1) to a local port: the wanted one or the next free."""
    wanted = local_ports or remote_ports
    for _attempt in range(5):  # a port can be taken between our check and ssh's bind: pick again
        pairs, used = [], set()
        for want, remote in zip(wanted, remote_ports):
            p = next_free_port(want, skip=used)
            used.add(p)
            pairs.append((p, remote))
        argv = forward_argv(target, pairs)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if all(port_listening(lp) for lp, _ in pairs):
                return Tunnel(proc, pairs)
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            raise RemoteError(f"the tunnel to {target.name} did not come up within {timeout:g} s",
                              f"check the connection with `ssh {target.name} true`")
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
    """Keep ``tunnel``'s forwards up until Ctrl-C (KeyboardInterrupt propagates; the tunnel is closed).

    When its ssh ends (the laptop slept, Wi-Fi changed, the box rebooted) it is redialled with backoff
    on the same local ports, so an open browser tab carries on; a port taken meanwhile moves, and says so.
    """
    current = tunnel
    try:
        while True:
            while current.proc.poll() is None:
                time.sleep(0.5)
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
            log(f"reconnected to {target.name}" + (f" (local port moved: {', '.join(moved)})" if moved else ""))
    finally:
        current.close()
