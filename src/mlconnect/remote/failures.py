"""ssh's own failures and failed commands on a target, as one-line errors with the next step."""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING

from mlconnect import __version__
from mlconnect.errors import MlconnectError, RemoteError
from mlconnect.remote.argv import describe

if TYPE_CHECKING:
    from mlconnect.remote.ssh import Target


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("@@@")]
    return lines[-1].strip() if lines else ""


_UNREACHABLE = ("Connection refused", "No route to host", "Connection timed out", "Operation timed out",
                "Network is unreachable", "Could not resolve hostname", "Name or service not known",
                "nodename nor servname", "timed out during banner exchange", "Connection reset",
                "Connection closed by", "kex_exchange_identification", "Temporary failure in name")


def _fix_ssh(target: Target) -> str:
    cfg = f" -F {shlex.quote(target.ssh_config)}" if target.ssh_config else ""
    return f"ssh{cfg} {target.name} true"


def _permanent(err: RemoteError) -> RemoteError:
    err.permanent = True  # `logs -f` retries a dropped connection, never a refusal like this one
    return err


def classify_ssh_failure(target: Target, argv: list[str], rc: int, stderr: str) -> MlconnectError | None:
    """An error for ssh's own failures (exit 255 + ssh's message); None when ssh itself was fine."""
    if rc != 255:
        return None
    err = stderr or ""
    where = f"{target.name} ({target.destination()}" + (
        f":{target.host.port})" if target.host and target.host.port else ")")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err or "Host key verification failed" in err:
        return _permanent(RemoteError(
            f"the host key of {where} has changed; refusing to connect",
            "if the box was reinstalled, remove the old key with `ssh-keygen -R <host>` (or `-R '[host]:port'`) "
            "and retry; if not, someone may be intercepting the connection",
            command=argv, returncode=rc, stderr=err))
    if "Permission denied" in err or "Too many authentication failures" in err:
        return _permanent(RemoteError(
            f"authentication to {where} failed (ssh: {_last_line(err)})",
            "add your public key to the host's ~/.ssh/authorized_keys (`mlconnect setup client` prints it) "
            f"and check IdentityFile; test with `{_fix_ssh(target)}`",
            command=argv, returncode=rc, stderr=err))
    if any(m in err for m in _UNREACHABLE):
        return RemoteError(
            f"cannot reach {where}: {_last_line(err)}",
            "check that the box is on and sshd listens on that port (on WSL2: the Windows port forward and "
            f"firewall, `mlconnect setup windows`); test with `{_fix_ssh(target)}`",
            command=argv, returncode=rc, stderr=err)
    if err.lstrip().startswith(("ssh:", "mux_client", "Control socket", "muxclient")):
        return RemoteError(f"ssh to {where} failed: {_last_line(err)}",
                           f"test the connection with `{_fix_ssh(target)}`",
                           command=argv, returncode=rc, stderr=err)
    return None  # the remote command itself exited 255


def classify_command_failure(target: Target, argv: list[str], rc: int, stderr: str) -> RemoteError:
    """A failed command on the target: missing tool, missing mlconnect, missing folder, or its own error."""
    err = stderr or ""
    prog = os.path.basename(argv[0]) if argv else "?"
    on = "this machine" if target.is_local else target.name
    host_flag = "" if target.is_local else f" --host {target.name}"
    if "mlconnect: no such directory on the host" in err:
        return RemoteError(f"{target.remote_root} does not exist on {on}",
                           f"run `mlconnect sync{host_flag}` (or `mlconnect bootstrap{host_flag}`) first",
                           command=argv, returncode=rc, stderr=err)
    missing = rc == 127 or "command not found" in err or (
        rc == 126 or (f"{argv[0]}: not found" in err) or ("exec:" in err and "not found" in err))
    if missing:
        if prog.startswith("python") or argv[0] == target.python:
            return RemoteError(f"python `{argv[0]}` was not found on {on}",
                               f"run `mlconnect bootstrap{host_flag}`, or set `python` for this host in "
                               "mlconnect.toml", command=argv, returncode=rc, stderr=err)
        if prog == "rsync":
            return RemoteError(f"rsync is not installed on {on}",
                               "install it there: `sudo apt-get install -y rsync`",
                               command=argv, returncode=rc, stderr=err)
        return RemoteError(f"`{prog}` is not installed on {on}", f"install {prog} there",
                           command=argv, returncode=rc, stderr=err)
    if "No module named mlconnect" in err or "No module named 'mlconnect'" in err:
        return RemoteError(f"mlconnect is not installed for {target.python} on {on}",
                           f"run `mlconnect bootstrap{host_flag}`", command=argv, returncode=rc, stderr=err)
    if "No module named 'mlconnect." in err or "No module named mlconnect." in err:
        return RemoteError(f"the mlconnect on {on} is older than this one ({__version__}): {_last_line(err)}",
                           f"run `mlconnect bootstrap{host_flag}` to install this version there",
                           command=argv, returncode=rc, stderr=err)
    detail = _last_line(err)
    return RemoteError(f"`{describe(argv)}` failed on {on} (exit {rc})" + (f": {detail}" if detail else ""),
                       "see the output above; rerun with MLCONNECT_DEBUG=1 for details",
                       command=argv, returncode=rc, stderr=err)
