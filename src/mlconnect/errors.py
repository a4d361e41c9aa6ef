"""Errors a person can act on.

Every error mlconnect raises on purpose is an ``MlconnectError``: the CLI prints it as one line,
``error: <what failed> — <what to do>``, and exits non-zero. Anything else is a bug and shows a
traceback (always with ``MLCONNECT_DEBUG=1``).
"""

from __future__ import annotations


class MlconnectError(Exception):
    """Base class: ``message`` says what failed, ``hint`` says what to do next."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} — {self.hint}" if self.hint else self.message


class UsageError(MlconnectError):
    """The command line itself is wrong (exit code 2, like click's usage errors)."""

    exit_code = 2


class ConfigError(MlconnectError):
    """A config with several mistakes reports all of them at once."""

    def __init__(self, problems: list[str], source: str = "config",
                 hint: str = "fix the keys above (see configs/ for examples)") -> None:
        self.problems = list(problems)
        joined = "; ".join(self.problems)
        super().__init__(f"{source}: {joined}", hint)


class DataError(MlconnectError):
    """A malformed data file: names the file, line and column."""

    def __init__(self, path: str, problem: str, line: int | None = None, column: str | None = None,
                 hint: str = "fix the file or point data_path at another dataset") -> None:
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {problem}", hint)
        self.path, self.line, self.column = path, line, column


class ExperimentError(MlconnectError):
    """An experiment folder is missing, already exists, or is in the wrong state."""


class WriteError(MlconnectError, OSError):
    """A file could not be written (full disk, quota, read-only...): names the path, the free
    space there and what to do. Still an OSError, so code that tolerates failed writes does."""

    def __init__(self, path: str, reason: str, free_bytes: int | None, hint: str = "") -> None:
        free = "unknown free space" if free_bytes is None else f"{_size(free_bytes)} free there"
        super().__init__(f"cannot write {path}: {reason} ({free})",
                         hint or "free some space on that disk (or write somewhere else), then run again")
        self.path, self.reason, self.free_bytes = path, reason, free_bytes


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class RemoteError(MlconnectError):
    """A command on the host failed: carries the command, its return code and its stderr tail."""

    def __init__(self, message: str, hint: str = "", *, command: list[str] | None = None,
                 returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message, hint)
        self.command = command or []
        self.returncode = returncode
        self.stderr_tail = "\n".join(stderr.strip().splitlines()[-5:])
        # ssh refused for good (a wrong key, a changed host key): waiting and retrying cannot fix it.
        self.permanent = False


AGENT_REFUSED_EXIT = 3  # the agent's exit status when it refuses on purpose (runs/agent.py)


# Talking to the host agent (``python -m mlconnect.runs.agent``, here or over ssh): one tree, so a
# caller picks what to handle by type (httpx-style), never by a return code. All are RemoteErrors.
class AgentError(RemoteError):
    """Any failure of an agent call: catch this one for all of them."""

    @classmethod
    def from_remote(cls, err: RemoteError, message: str | None = None) -> AgentError:
        new = cls(message or err.message, err.hint, command=err.command, returncode=err.returncode,
                  stderr=err.stderr_tail)
        new.permanent = err.permanent
        return new


class AgentRefused(AgentError):
    """The agent refused on purpose (unknown experiment, already running, bad name...): the host's own
    words, never worth retrying. ``remote_type`` is the host's error class; a usage error keeps exit 2."""

    remote_type = "MlconnectError"


class AgentUnreachable(AgentError):
    """The call did not get through: ssh could not connect, the connection dropped, or it timed out.
    Worth retrying (``logs -f`` does)."""


class AgentProtocolError(AgentError):
    """Something answered, but not this agent: no mlconnect (or an older one) for the host's python,
    no project folder there, or output that is not the agent's JSON."""
