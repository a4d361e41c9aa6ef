"""The SSH transport: one ``Target`` that runs argv lists here or on a host, through one code path.

Design (see docs/ARCHITECTURE.md):

- The system OpenSSH client, as an argv list. Options are spelled out in ``SSH_OPTIONS`` with the
  reason for each.
- Anything that passes through the remote shell is quoted in exactly one place:
  ``remote_command`` (using ``remote_quote``). Nothing else builds shell strings.
- Connections are multiplexed (``ControlMaster=auto``) through sockets in a 0700 directory of ours.
  A wedged master (stopped, or stuck on a dead network) would make every later command hang in
  the mux handshake, where ``ConnectTimeout`` does not apply; so every call has a timeout, and the
  first call of each ``Target`` (and any call that times out) probes the master: a master that does
  not say hello within ``MASTER_PROBE_S`` is killed by the pid the kernel reports for its socket
  (never by name) and the socket removed; then the command is dialled again once.
- ssh's own failures (exit 255) become one-line errors with the next step (``classify_ssh_failure``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlconnect import __version__
from mlconnect.errors import MlconnectError, RemoteError
from mlconnect.settings import HostConfig, Settings, load_settings

CONTROL_PERSIST = "10m"  # a warm connection outlives one command; gone after 10 idle minutes
CONNECT_TIMEOUT_S = 8  # TCP connect + banner; the "unreachable within 10 s" promise rests on it
MASTER_PROBE_S = 2.0  # a healthy master answers its socket in well under a millisecond
LOCAL_NAMES = ("local", "localhost-local")  # --host local forces this machine


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


def _expand_local(arg: str) -> str:
    return os.path.expanduser(arg) if arg.startswith("~/") or arg == "~" else arg


def _tail(text: str, n: int = 5) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip() and not ln.startswith("@@@")]
    return lines[-1].strip() if lines else ""


@dataclass
class Target:
    """Where commands run: this machine (is_local) or an SSH host, through one code path."""

    name: str  # "local" or the host alias
    is_local: bool
    remote_root: str  # project root on the target (the cwd for local); may start with "~/"
    python: str  # interpreter on the target; local: sys.executable
    ssh_config: str | None = None  # ssh -F; None: $HOME/.ssh/config when it exists
    host: HostConfig | None = None  # the mlconnect.toml entry, when there is one
    env: list[str] = field(default_factory=list)  # shell setup lines run before each command
    data_path: str | None = None
    _control_path: str | None = field(default=None, repr=False)
    _probed: bool = field(default=False, repr=False)
    _remote_version: str | None = field(default=None, repr=False)
    _remote_build: str | None = field(default=None, repr=False)

    # ---- argv building (pure) -----------------------------------------------------------------

    def destination(self) -> str:
        h = self.host
        return h.hostname if h and h.hostname else self.name

    def ssh_argv(self, extra_options: list[str] | None = None) -> list[str]:
        """``["ssh", "-F", cfg, "-o", ..., destination]``; append the remote command yourself."""
        argv = ["ssh"]
        cfg = self.ssh_config
        if cfg is None:
            # ssh reads ~/.ssh/config from the passwd entry, not $HOME: name it so $HOME wins.
            default = Path.home() / ".ssh" / "config"
            cfg = str(default) if default.is_file() else None
        if cfg:
            argv += ["-F", cfg]
        # ssh keeps the FIRST value of each option: callers' extra options go first so they win.
        for opt in list(extra_options or []) + ssh_options():
            argv += ["-o", opt]
        h = self.host
        if h is not None:
            if h.port:
                argv += ["-p", str(h.port)]
            if h.user:
                argv += ["-l", h.user]
            if h.identity_file:
                argv += ["-i", os.path.expanduser(h.identity_file), "-o", "IdentitiesOnly=yes"]
        argv.append(self.destination())
        return argv

    def command_argv(self, argv: list[str], *, cwd: str | None = None) -> list[str]:
        """The local argv that runs ``argv`` on the target in ``cwd`` (default remote_root)."""
        if self.is_local:
            return [_expand_local(a) for a in argv]
        return [*self.ssh_argv(), remote_command(argv, cwd=cwd or self.remote_root, env_lines=self.env)]

    def rsync_rsh(self) -> str:
        """The ``rsync -e`` value: our ssh argv minus the destination (rsync appends it)."""
        return " ".join(rsh_quote(a) for a in self.ssh_argv()[:-1])

    def rsync_path(self, path: str) -> str:
        """``dest:path`` for rsync; ``~/x`` becomes ``x`` (remote paths are relative to the home)."""
        if self.is_local:
            return _expand_local(path)
        if path == "~":
            path = "."
        elif path.startswith("~/"):
            path = path[2:] or "."
        return f"{self.destination()}:{path}"

    # ---- running --------------------------------------------------------------------------------

    def run(self, argv: list[str], *, timeout: float | None = 30, input: str | None = None,
            check: bool = True, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv in remote_root (or cwd); RemoteError (command, rc, stderr tail) when check and rc != 0.

        Connection failures (ssh exit 255 with ssh's own message) raise even with ``check=False``:
        ``check`` is about the command's exit status, not about reaching the host.
        """
        if self.is_local:
            return self._run_local(argv, timeout=timeout, input=input, check=check, cwd=cwd)
        self._probe_once()
        full = self.command_argv(argv, cwd=cwd)
        for attempt in (1, 2):
            try:
                cp = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout,
                                    stdin=subprocess.DEVNULL if input is None else None)
                break
            except subprocess.TimeoutExpired as exc:
                # Only redial when the master was wedged: then the command never reached the host,
                # so running it again cannot run it twice.
                if attempt == 1 and self.evict_master_if_wedged():
                    continue
                raise RemoteError(
                    f"`{describe(argv)}` on {self.name} did not finish within {timeout:g} s",
                    f"check the connection with `ssh {self.name} true` and the host with `mlconnect status`",
                    command=argv, returncode=None,
                    stderr=(exc.stderr or b"").decode() if isinstance(exc.stderr, bytes)
                    else (exc.stderr or ""),
                ) from None
        err = classify_ssh_failure(self, argv, cp.returncode, cp.stderr)
        if err is not None:
            raise err
        if check and cp.returncode != 0:
            raise classify_command_failure(self, argv, cp.returncode, cp.stderr)
        return cp

    def _run_local(self, argv: list[str], *, timeout: float | None, input: str | None, check: bool,
                   cwd: str | None) -> subprocess.CompletedProcess[str]:
        full = self.command_argv(argv)
        try:
            cp = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout,
                                cwd=_expand_local(cwd or self.remote_root),
                                stdin=subprocess.DEVNULL if input is None else None)
        except FileNotFoundError as exc:
            raise RemoteError(f"{argv[0]} is not installed on this machine",
                              f"install it, or check PATH ({exc.filename})",
                              command=argv, returncode=127) from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"`{describe(argv)}` did not finish within {timeout:g} s",
                              "see what it is waiting for, or raise the timeout",
                              command=argv) from None
        if check and cp.returncode != 0:
            raise classify_command_failure(self, argv, cp.returncode, cp.stderr)
        return cp

    def popen(self, argv: list[str], **popen_kw: Any) -> subprocess.Popen:
        """Start argv on the target and stream (``logs -f``); ``cwd=`` is the target's directory."""
        cwd = popen_kw.pop("cwd", None)
        popen_kw.setdefault("stdin", subprocess.DEVNULL)
        if self.is_local:
            return subprocess.Popen(self.command_argv(argv), cwd=_expand_local(cwd or self.remote_root),
                                    **popen_kw)
        self._probe_once()
        return subprocess.Popen(self.command_argv(argv, cwd=cwd), **popen_kw)

    def agent(self, verb: str, *args: str, timeout: float | None = 30) -> Any:
        """Run `<python> -m mlconnect.runs.agent <verb> --json <args>` in remote_root; parse JSON stdout.

        A failing agent may print ``{"error": ..., "hint": ...}`` and exit non-zero: that becomes a
        RemoteError with its message. Every answer carries ``mlconnect_version`` (and, from a wheel
        ``mlconnect bootstrap`` built, ``mlconnect_build``): a mismatch prints one warning per host.
        """
        argv = [self.python, "-m", "mlconnect.runs.agent", verb, "--json", *args]
        cp = self.run(argv, timeout=timeout, check=False)
        data = _parse_json(cp.stdout)
        if isinstance(data, dict):
            self._note_remote_version(data)
        if cp.returncode != 0:
            if isinstance(data, dict) and data.get("error"):
                raise RemoteError(str(data["error"]), str(data.get("hint", "")), command=argv,
                                  returncode=cp.returncode, stderr=cp.stderr)
            raise classify_command_failure(self, argv, cp.returncode, cp.stderr)
        if data is _NOT_JSON:
            raise RemoteError(f"the mlconnect agent on {self.name} printed something that is not JSON",
                              "a shell startup file or env line on the host may print to stdout; "
                              "make it quiet for non-interactive shells",
                              command=argv, returncode=cp.returncode, stderr=cp.stdout[-500:])
        return data

    # ---- version skew -------------------------------------------------------------------------

    def remote_version(self, *, timeout: float | None = 30) -> str:
        """The mlconnect version installed for ``python`` on the target (cached per Target)."""
        if self.is_local:
            return __version__
        if self._remote_version is None:
            argv = [self.python, "-c", "import mlconnect; print(mlconnect.__version__)"]
            cp = self.run(argv, timeout=timeout, check=True, cwd="~")
            self._remote_version = cp.stdout.strip().splitlines()[-1] if cp.stdout.strip() else "?"
        return self._remote_version

    def version_skew(self) -> str | None:
        """One line when laptop and host run different mlconnect versions (or builds), else None."""
        remote = self.remote_version()
        return skew_message(self.name, remote, self._remote_build)

    def _note_remote_version(self, data: dict) -> None:
        """Remember the agent's version; the first mismatch per host in this process prints one warning."""
        version = data.get("mlconnect_version")
        if not isinstance(version, str) or self.is_local:
            return
        self._remote_version = version
        build = data.get("mlconnect_build")
        self._remote_build = build if isinstance(build, str) else None
        if self.name in _SKEW_WARNED:
            return
        line = skew_message(self.name, version, self._remote_build)
        if line:
            _SKEW_WARNED.add(self.name)
            sys.stderr.write(f"warning: {line}\n")
            sys.stderr.flush()

    # ---- the control master ---------------------------------------------------------------------

    def control_path(self) -> str | None:
        """The expanded ControlPath (ssh -G resolves %C for us), cached."""
        if self.is_local:
            return None
        if self._control_path is None:
            argv = self.ssh_argv()
            try:
                cp = subprocess.run([argv[0], "-G", *argv[1:]], capture_output=True, text=True,
                                    timeout=10, stdin=subprocess.DEVNULL)
            except (OSError, subprocess.TimeoutExpired):
                return None
            for line in cp.stdout.splitlines():
                key, _, value = line.partition(" ")
                if key == "controlpath" and value and value != "none":
                    self._control_path = value.strip()
        return self._control_path

    def _probe_once(self) -> None:
        if not self._probed:
            self._probed = True
            self.evict_master_if_wedged()

    def evict_master_if_wedged(self) -> bool:
        """Kill a master that holds its socket but does not answer; True when one was evicted."""
        path = self.control_path()
        if not path:
            return False
        state, pid = probe_master(path)
        if state == "stale":
            _unlink(path)
            return False
        if state != "wedged":
            return False
        # ControlPersist forks after listen(): the kernel's peer pid is the parent that went on to be
        # the first mux client, not the master. Find the process holding the socket's inode instead.
        for pid in _socket_holders(path):
            if _is_our_ssh(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)  # a stopped process still receives SIGKILL
        _unlink(path)
        return True

    def close_master(self, timeout: float = 5) -> None:
        """``ssh -O exit``: end the shared connection (tests, benchmarks, `setup` after key changes)."""
        if self.is_local:
            return
        argv = self.ssh_argv()
        try:
            subprocess.run([argv[0], "-O", "exit", *argv[1:]], capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            self.evict_master_if_wedged()


_SKEW_WARNED: set[str] = set()  # hosts already warned about in this process: one line each, not one per call


def skew_message(host: str, remote_version: str, remote_build: str | None = None) -> str | None:
    """``mlconnect X here but Y on H — run ...`` when the host runs other code than this process, else None.

    Equal versions are compared by build id when the host reports one (it runs a wheel that
    ``mlconnect bootstrap`` built); this side's id is then hashed from its checkout, once per process.
    """
    if remote_version != __version__:
        here, there = __version__, remote_version
    else:
        if not remote_build:
            return None
        from mlconnect.remote.wheel import local_build_id  # imports settings: deferred

        local = local_build_id()
        if not local or local == remote_build:
            return None
        here, there = f"{__version__} (build {local})", f"{remote_version} (build {remote_build})"
    return f"mlconnect {here} here but {there} on {host} — run `mlconnect bootstrap --host {host}`"


_NOT_JSON: Any = object()


def _parse_json(stdout: str) -> Any:
    text = stdout.strip()
    if not text:
        return _NOT_JSON
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    # Tolerate chatter before the JSON (a noisy profile script): take the last line.
    try:
        return json.loads(text.splitlines()[-1])
    except json.JSONDecodeError:
        return _NOT_JSON


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


def _socket_holders(path: str) -> list[int]:
    """Pids of our processes holding the listening unix socket at ``path`` (by inode, not by name)."""
    try:
        if Path("/proc/net/unix").exists():
            inode = None
            for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
                parts = line.split()
                if len(parts) >= 8 and (parts[7] == path or parts[7].startswith(path + ".")):  # bound as tmp
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


def _socket_holder(path: str) -> int | None:
    """The master among the holders: the one whose parent is not itself an ssh (it was daemonized)."""
    holders = _socket_holders(path)
    for pid in holders:
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return pid
        if ppid not in holders:
            return pid
    return holders[0] if holders else None


def _is_our_ssh(pid: int) -> bool:
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


# ---- error classification ------------------------------------------------------------------------

_UNREACHABLE = ("Connection refused", "No route to host", "Connection timed out", "Operation timed out",
                "Network is unreachable", "Could not resolve hostname", "Name or service not known",
                "nodename nor servname", "timed out during banner exchange", "Connection reset",
                "Connection closed by", "kex_exchange_identification", "Temporary failure in name")


def _fix_ssh(target: Target) -> str:
    cfg = f" -F {shlex.quote(target.ssh_config)}" if target.ssh_config else ""
    return f"ssh{cfg} {target.name} true"


def classify_ssh_failure(target: Target, argv: list[str], rc: int, stderr: str) -> MlconnectError | None:
    """An error for ssh's own failures (exit 255 + ssh's message); None when ssh itself was fine."""
    if rc != 255:
        return None
    err = stderr or ""
    where = f"{target.name} ({target.destination()}" + (
        f":{target.host.port})" if target.host and target.host.port else ")")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in err or "Host key verification failed" in err:
        return RemoteError(
            f"the host key of {where} has changed; refusing to connect",
            "if the box was reinstalled, remove the old key with `ssh-keygen -R <host>` (or `-R '[host]:port'`) "
            "and retry; if not, someone may be intercepting the connection",
            command=argv, returncode=rc, stderr=err)
    if "Permission denied" in err or "Too many authentication failures" in err:
        return RemoteError(
            f"authentication to {where} failed (ssh: {_last_line(err)})",
            "add your public key to the host's ~/.ssh/authorized_keys (`mlconnect setup client` prints it) "
            f"and check IdentityFile; test with `{_fix_ssh(target)}`",
            command=argv, returncode=rc, stderr=err)
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


def describe(argv: list[str], longest: int = 60) -> str:
    """The command for an error line: shell-quoted, with any long argument (a ``python -c`` program)
    shown as its size, so the line stays one line and is never cut inside a quote."""
    return shlex.join(a if len(a) <= longest else f"<{len(a)} characters>" for a in argv)


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


# ---- resolution ----------------------------------------------------------------------------------

def resolve_target(host: str | None = None, *, ssh_config: str | None = None,
                   settings: Settings | None = None) -> Target:
    """--host / project default host (mlconnect.toml) / local."""
    s = settings or load_settings(overrides={"ssh_config": ssh_config})
    if ssh_config:
        s.ssh_config = os.path.expanduser(ssh_config)
    name = host or s.default_host
    if not name or name in LOCAL_NAMES:
        return Target(name="local", is_local=True, remote_root=str(s.root), python=sys.executable,
                      data_path=s.data_path)
    hc = s.hosts.get(name)
    return Target(
        name=name, is_local=False, remote_root=s.remote_root_for(name),
        python=(hc.python if hc and hc.python else "python3"),
        ssh_config=s.ssh_config, host=hc, env=list(hc.env) if hc else [],
        data_path=(hc.data_path if hc and hc.data_path else s.data_path),
    )


def wait_until(pred: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``pred()`` until true or ``timeout`` seconds pass (used by tunnels and services)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return bool(pred())
