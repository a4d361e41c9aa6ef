"""Building ssh argv and remote shell strings (pure; unit-tested in tests/unit/test_ssh_argv.py).

- The system OpenSSH client, as an argv list. Options are spelled out in ``ssh_options`` with the
  reason for each.
- Anything that passes through the remote shell is quoted in exactly one place:
  ``remote_command`` (using ``remote_quote``). Nothing else builds shell strings.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from mlconnect.errors import MlconnectError

CONTROL_PERSIST = "10m"  # a warm connection outlives one command; gone after 10 idle minutes
CONNECT_TIMEOUT_S = 8  # TCP connect + banner; the "unreachable within 10 s" promise rests on it


def control_dir() -> Path:
    """A 0700 directory for the control sockets, with a short path.

    Unix socket paths are limited to ~104 bytes on macOS (108 on Linux); ssh adds a 40-character
    %C hash and, while creating the socket, a 17-character random suffix.
    """
    env = os.environ.get("MLCONNECT_CONTROL_DIR")
    if env:
        d = Path(env)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        d = Path(os.environ["XDG_RUNTIME_DIR"]) / "mlconnect"
    else:
        d = Path.home() / ".cache" / "mlconnect" / "cm"
    if len(str(d)) + 1 + 40 + 17 > 100:
        d = Path("/tmp") / f"mlconnect-{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = d.stat()
    if st.st_uid != os.getuid():
        raise MlconnectError(f"{d} belongs to another user",
                             "set MLCONNECT_CONTROL_DIR to a directory of your own")
    if st.st_mode & 0o077:
        os.chmod(d, 0o700)  # others must not reach our authenticated sockets
    return d


def ssh_options() -> list[str]:
    """The ``-o`` options every ssh call carries, and why."""
    return [
        # Multiplexing: the first call pays the handshake, repeats reuse it (~10 ms instead of ~150).
        "ControlMaster=auto",
        f"ControlPersist={CONTROL_PERSIST}",
        f"ControlPath={control_dir()}/%C",
        # Never prompt: a password or passphrase prompt would hang a background command.
        "BatchMode=yes",
        f"ConnectTimeout={CONNECT_TIMEOUT_S}",
        # Notice a dead network (laptop asleep, Wi-Fi gone) in ~45 s instead of hours.
        "ServerAliveInterval=15",
        "ServerAliveCountMax=3",
        # Trust on first use, but abort when a known host's key changes.
        "StrictHostKeyChecking=accept-new",
        # The box must never be able to use the laptop's keys.
        "ForwardAgent=no",
        "ForwardX11=no",
        # Only errors on stderr, so the remote command's stderr is not mixed with ssh chatter.
        "LogLevel=ERROR",
    ]


def remote_quote(arg: str) -> str:
    """Quote one argument for the remote POSIX shell; a leading ``~/`` still means the remote home."""
    if arg == "~":
        return '"$HOME"'
    if arg.startswith("~/"):
        return '"$HOME"/' + shlex.quote(arg[2:])
    return shlex.quote(arg)


def remote_command(argv: list[str], *, cwd: str, env_lines: list[str] | None = None) -> str:
    """THE place where a command becomes a remote shell string.

    ``env_lines`` are the host's setup lines from mlconnect.toml, run verbatim (they are the user's
    own shell: ``source ~/.bashrc``, ``conda activate ml``); everything else is quoted.
    """
    if not argv:
        raise ValueError("empty command")
    lines = list(env_lines or [])
    lines.append(f"cd {remote_quote(cwd)} 2>/dev/null || "
                 f"{{ echo 'mlconnect: no such directory on the host: '{shlex.quote(cwd)} >&2; exit 1; }}")
    lines.append("exec " + " ".join(remote_quote(a) for a in argv))
    return "; ".join(lines)


def rsh_quote(arg: str) -> str:
    """Quote for rsync's ``-e`` string, which rsync splits on spaces honouring '...' and "..."."""
    if arg and not any(c in arg for c in " '\"\t"):
        return arg
    if "'" not in arg:
        return f"'{arg}'"
    if '"' not in arg:
        return f'"{arg}"'
    raise MlconnectError(f"cannot pass {arg!r} to rsync's -e", "avoid quotes in ssh config paths")


def expand_local(arg: str) -> str:
    """``~`` / ``~/x`` on this machine (a local Target runs argv without a shell to expand them)."""
    return os.path.expanduser(arg) if arg.startswith("~/") or arg == "~" else arg


def describe(argv: list[str], longest: int = 60) -> str:
    """The command for an error line: shell-quoted, with any long argument (a ``python -c`` program)
    shown as its size, so the line stays one line and is never cut inside a quote."""
    return shlex.join(a if len(a) <= longest else f"<{len(a)} characters>" for a in argv)


# The host agent's hints name commands as if typed on the host (`mlconnect pull k1`); on the laptop
# they need the host, or following them literally looks for the experiment here.
_HOST_VERBS = re.compile(r"`(mlconnect (?:ps|logs|stop|resume|pull|train|tensorboard|status|exp)\b[^`]*)`")


def with_host_flag(hint: str, host: str) -> str:
    """``hint`` with ``--host HOST`` added to each per-host `mlconnect ...` command lacking one."""
    return _HOST_VERBS.sub(lambda m: m.group(0) if "--host" in m.group(1)
                           else f"`{m.group(1)} --host {host}`", hint)
