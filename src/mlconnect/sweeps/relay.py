"""``--hosts a,b``: trial workers on other boxes reach the one study on the first box through SSH.

Design (why this and not Optuna's gRPC storage proxy): the first box's sweep controller starts each
remote worker itself, as ``ssh b 'python -m mlconnect.sweeps.worker --relay ...'``, and the worker's
stdin/stdout over that ssh session *is* its storage. Optuna's ``JournalStorage`` needs only two
operations from a backend (``read_logs(from)``, ``append_logs(logs)``); the controller answers them
from the study's own journal file, and also holds the "count, then ask" lock and writes the sweep's
log for the remote worker. So:

- nothing listens anywhere (not even on 127.0.0.1: no port, no forward, no ``AllowTcpForwarding``),
  and no package beyond Optuna (the gRPC proxy needs ``grpcio`` on every box and a forwarded port);
- a remote worker cannot outlive its channel: EOF on stdin (the first box rebooted, the network
  dropped, the controller was killed) stops it like ``sweep stop`` does (SIGTERM to itself: the
  trainer checkpoints), and the controller sees the ssh end, so the trials that box was running
  are queued again (``study.requeue_interrupted``) for any box to take;
- ``sweep stop`` is one message on each channel (``{"stop": true}``); ``resume`` starts them again.

What it needs: the first box must reach the others with ``ssh`` without a prompt (a key of the
first box in each other box's ``authorized_keys``); ``sweep start`` checks that before anything starts.

Protocol: one JSON object per line. Worker -> controller ``{"id", "op", ...}``; controller ->
worker ``{"id", "result"}`` or ``{"id", "error"}``, and at any time ``{"stop": true}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from optuna.storages.journal import BaseJournalBackend

from mlconnect.errors import ExperimentError

REPLY_TIMEOUT_S = 120.0  # a first box gone silent (no EOF) stops the remote worker after this
# Each remote worker has its own connection (its lifetime is the worker's); a dead network is seen
# in ~15 s, not ssh's usual 45.
SSH_OPTIONS = ["ControlMaster=no", "ControlPath=none", "ServerAliveInterval=5", "ServerAliveCountMax=3"]


class RelayLost(ConnectionError):
    """The channel to the first box is gone."""


# ------------------------------------------------------------------------- the remote worker's side


class RelayBackend(BaseJournalBackend):
    """A journal backend whose every call is answered by the first box's controller over ssh."""

    def __init__(self, rfile: IO[bytes], wfile: IO[bytes], on_stop: Callable[[], None]) -> None:
        self._w = wfile
        self._lock = threading.Lock()
        self._replies: queue.Queue[dict | None] = queue.Queue()
        self._n = 0
        self._on_stop = on_stop
        self.stopped = threading.Event()
        threading.Thread(target=self._read, args=(rfile,), daemon=True).start()

    def _read(self, rfile: IO[bytes]) -> None:
        try:
            for line in rfile:
                msg = json.loads(line)
                if msg.get("stop"):
                    self._stop()
                else:
                    self._replies.put(msg)
        except Exception:  # noqa: BLE001  (a broken or garbled channel is a closed one)
            pass
        self._replies.put(None)  # EOF: the study is out of reach, so this worker stops
        self._stop()

    def _stop(self) -> None:
        if not self.stopped.is_set():  # once: the worker's (or the trainer's) SIGTERM handler does the rest
            self.stopped.set()
            self._on_stop()

    def call(self, op: str, **fields: Any) -> Any:
        with self._lock:
            self._n += 1
            try:
                self._w.write((json.dumps({"id": self._n, "op": op, **fields}) + "\n").encode())
                self._w.flush()
            except (BrokenPipeError, OSError, ValueError) as exc:
                raise RelayLost(f"the channel to the first box is closed ({exc})") from None
            while True:  # one request in flight at a time: its reply carries its id
                try:
                    msg = self._replies.get(timeout=REPLY_TIMEOUT_S)
                except queue.Empty:
                    raise RelayLost(f"the first box did not answer within {REPLY_TIMEOUT_S:g} s") from None
                if msg is None:
                    self._replies.put(None)
                    raise RelayLost("the channel to the first box is closed")
                if msg.get("id") == self._n:
                    break
        if "error" in msg:
            raise RuntimeError(f"the first box refused {op}: {msg['error']}")
        return msg.get("result")

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self.call("read", start=log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self.call("append", logs=logs)

    @contextlib.contextmanager
    def ask_lock(self) -> Iterator[None]:
        self.call("lock")
        try:
            yield
        finally:
            with contextlib.suppress(RelayLost):
                self.call("unlock")

    def log(self, text: str) -> None:
        """A line in the sweep's log on the first box (here too, in this worker's own log: stderr)."""
        print(text, file=sys.stderr, flush=True)
        with contextlib.suppress(RelayLost):
            self.call("log", text=text)


def attach(log_file: Path) -> RelayBackend:
    """Take stdin/stdout as the channel; this process's own output goes to ``log_file`` from now on."""
    rfile, wfile = os.fdopen(os.dup(0), "rb"), os.fdopen(os.dup(1), "wb")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for fd in (1, 2):  # the trainer's prints must never land in the protocol stream
        os.dup2(out, fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    # Asked to stop (or cut off): SIGTERM to ourselves, as `sweep stop` on one box: the trainer checkpoints.
    return RelayBackend(rfile, wfile, lambda: os.kill(os.getpid(), signal.SIGTERM))


# -------------------------------------------------------------------------- the first box's side


def box_target(box: dict[str, Any]) -> Any:
    """How the first box reaches ``box`` (the laptop's description of it: mlconnect.toml's entry).

    The laptop's ``--ssh-config`` file is used when it exists on this box too; otherwise this box's
    own ``~/.ssh/config``.
    """
    from mlconnect.remote.ssh import Target
    from mlconnect.settings import HostConfig

    cfg = box.get("ssh_config")
    host = HostConfig(name=box["name"], **{k: box.get(k) for k in ("hostname", "port", "user", "identity_file")})
    return Target(name=box["name"], is_local=False, remote_root=box["remote_root"], python=box["python"],
                  ssh_config=cfg if cfg and Path(os.path.expanduser(cfg)).is_file() else None, host=host,
                  env=list(box.get("env") or []))


def remote_argv(box: dict[str, Any], argv: list[str]) -> list[str]:
    """``ssh <box> 'cd <root> && <argv>'`` on its own connection."""
    from mlconnect.remote.argv import remote_command

    t = box_target(box)
    return [*t.ssh_argv(SSH_OPTIONS), remote_command(argv, cwd=t.remote_root, env_lines=t.env)]


def worker_argv(box: dict[str, Any], sweep: str, slot: int, run_id: str) -> list[str]:
    # The sweep's run id on its command line: the trial's status.json on that box names a live worker.
    return remote_argv(box, [box["python"], "-X", f"mlconnect-run={run_id}", "-m", "mlconnect.sweeps.worker",
                             "--sweep-dir", f"sweeps/{sweep}", "--slot", str(slot), "--box", box["name"],
                             "--relay"])


def check_reachable(boxes: list[dict[str, Any]], first: str, timeout: float = 60) -> None:
    """Every other box answers ``ssh`` from here and has mlconnect and Optuna: else one line naming it."""
    for box in boxes:
        name = box["name"]
        argv = remote_argv(box, [box["python"], "-c", "import optuna, mlconnect.sweeps.worker"])
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            cp = subprocess.CompletedProcess(argv, 255, "", f"no answer within {timeout:g} s")
        if cp.returncode == 0:
            continue
        tail = (cp.stderr.strip().splitlines() or ["?"])[-1][:200]
        if cp.returncode == 255:  # ssh's own failure
            raise ExperimentError(f"box {name} cannot be reached over ssh from the first box {first} ({tail})",
                                  f"{first} must run `ssh {name} true` without a prompt: put a key of {first} "
                                  f"into {name}'s authorized_keys")
        raise ExperimentError(f"box {name} has no mlconnect with optuna for {box['python']} ({tail})",
                              f"`mlconnect bootstrap --host {name}`, then `pip install 'mlconnect[sweep]'` there")


class Server:
    """Answers one remote worker (a thread per worker); ``stop()`` asks it to stop."""

    def __init__(self, proc: subprocess.Popen, journal: Path, lock: Path, spec: dict[str, Any],
                 log: Callable[[str], None]) -> None:
        from optuna.storages.journal import JournalFileBackend

        self.proc, self._spec, self._log, self._lock_path = proc, spec, log, lock
        self._backend = JournalFileBackend(str(journal))
        self._send_lock = threading.Lock()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _send(self, msg: dict[str, Any]) -> None:
        with self._send_lock, contextlib.suppress(BrokenPipeError, OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps(msg) + "\n").encode())
            self.proc.stdin.flush()

    def stop(self) -> None:
        self._send({"stop": True})

    def _answer(self, msg: dict[str, Any], held: contextlib.ExitStack) -> Any:
        op = msg.get("op")
        if op == "read":
            return list(self._backend.read_logs(int(msg["start"])))
        if op == "append":
            return self._backend.append_logs(msg["logs"])
        if op == "lock":
            from mlconnect.fileio import locked

            held.enter_context(locked(self._lock_path))
            return None
        if op == "unlock":
            held.close()
            return None
        if op == "log":
            return self._log(str(msg["text"]))
        if op == "spec":
            return self._spec
        raise ValueError(f"unknown op {op!r}")

    def _serve(self) -> None:
        held = contextlib.ExitStack()  # the ask lock, while the remote worker holds it
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if not isinstance(msg, dict) or "op" not in msg:
                    # e.g. a shell startup file on that box that prints: not ours, not answered
                    self._log(f"ignored output of a remote worker: {line[:200]!r}")
                    continue
                try:
                    self._send({"id": msg.get("id"), "result": self._answer(msg, held)})
                except Exception as exc:  # a bad request fails that request, not the controller
                    self._send({"id": msg.get("id"), "error": f"{type(exc).__name__}: {exc}"})
        finally:
            held.close()  # a worker cut off while holding the lock must not block the others
