"""Running the real ``mlconnect`` CLI from tests: a clean environment and long-running foreground commands."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def cli_env(**extra: str) -> dict[str, str]:
    """This process's environment without the user's mlconnect settings (tests name their own)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", COLUMNS="200", **extra)
    for k in ("MLCONNECT_HOST", "MLCONNECT_DEBUG", "MLCONNECT_SSH_CONFIG", "MLCONNECT_API_KEY"):
        if k not in extra:
            env.pop(k, None)
    return env


class ForegroundCli:
    """``mlconnect ARGS`` that stays in the foreground (a tunnel, a server): read stdout line by line, then
    signal it as a terminal would. ``new_session`` makes a group signal behave like a terminal's Ctrl-C."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 new_session: bool = False) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mlconnect", *args], cwd=cwd, env=env or cli_env(),
                                     text=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=new_session)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._pump_out, daemon=True).start()
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()  # type: ignore[arg-type]

    def _pump_out(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.put(line)
        self.lines.put(None)

    def first_line(self, timeout: float = 150) -> str:
        """The next stdout line (the URL, or the --json document); fails with stderr when there is none."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if line is None:
            self.stop()
            raise AssertionError(f"no output from mlconnect (rc {self.proc.returncode}): {''.join(self.err)}")
        return line.strip()

    def stderr(self) -> str:
        time.sleep(0.2)  # lines written before the one just read may still be in the pipe: let the reader catch up
        return "".join(self.err)

    def stop(self, sig: int = signal.SIGINT, group: bool = False, wait: float = 30) -> int:
        """Send ``sig`` (SIGINT: what Ctrl-C sends) to the process, or its group; kill it if it hangs."""
        if self.proc.poll() is None:
            if group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode
