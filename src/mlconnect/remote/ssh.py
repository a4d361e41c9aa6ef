"""The SSH transport: one ``Target`` that runs argv lists here or on a host, through one code path.

Design (see docs/ARCHITECTURE.md). The concerns live next door: argv and quoting in
``remote.argv``, the control master's probe and eviction in ``remote.master``, one-line errors for
ssh's and commands' failures in ``remote.failures``. Here: every call has a timeout, and the first
call of each ``Target`` (and any call that times out) probes the master; a wedged one is evicted and
the command dialled again once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlconnect import __version__
from mlconnect.errors import (
    AGENT_REFUSED_EXIT,
    AgentProtocolError,
    AgentRefused,
    AgentUnreachable,
    RemoteError,
)
from mlconnect.remote.argv import (  # noqa: F401  (re-exported: callers import them from here)
    CONNECT_TIMEOUT_S,
    CONTROL_PERSIST,
    control_dir,
    describe,
    expand_local,
    remote_command,
    remote_quote,
    rsh_quote,
    ssh_options,
    with_host_flag,
)
from mlconnect.remote.failures import classify_command_failure, classify_ssh_failure
from mlconnect.remote.master import evict_if_wedged, probe_master  # noqa: F401  (re-exported)
from mlconnect.settings import HostConfig, Settings, load_settings

LOCAL_NAMES = ("local", "localhost-local")  # --host local forces this machine
AGENT_MODULE = "mlconnect.runs.agent"  # the host side of every run, log, status and service call


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
            return [expand_local(a) for a in argv]
        return [*self.ssh_argv(), remote_command(argv, cwd=cwd or self.remote_root, env_lines=self.env)]

    def rsync_rsh(self) -> str:
        """The ``rsync -e`` value: our ssh argv minus the destination (rsync appends it)."""
        return " ".join(rsh_quote(a) for a in self.ssh_argv()[:-1])

    def rsync_path(self, path: str) -> str:
        """``dest:path`` for rsync; ``~/x`` becomes ``x`` (remote paths are relative to the home)."""
        if self.is_local:
            return expand_local(path)
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
                                cwd=expand_local(cwd or self.remote_root),
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
            return subprocess.Popen(self.command_argv(argv), cwd=expand_local(cwd or self.remote_root),
                                    **popen_kw)
        self._probe_once()
        return subprocess.Popen(self.command_argv(argv, cwd=cwd), **popen_kw)

    def agent(self, verb: str, *args: str, timeout: float | None = 30, input: str | None = None,
              module: str = AGENT_MODULE) -> Any:
        """Run ``<python> -m <module> <verb> --json <args>`` in remote_root (``input`` on its stdin);
        its one JSON answer, or one of the :class:`~mlconnect.errors.AgentError` tree.

        The agent protocol: one JSON document on stdout; a deliberate refusal is exit 3 with
        ``{"error", "hint", "type"}`` (:class:`AgentRefused`, the host's words). ssh that cannot get
        through is :class:`AgentUnreachable`; a host without (this) mlconnect, or output that is not
        the agent's, is :class:`AgentProtocolError`. Every answer carries ``mlconnect_version`` (and,
        from a wheel ``mlconnect bootstrap`` built, ``mlconnect_build``): a mismatch warns once per host.
        """
        argv = [self.python, "-m", module, verb, "--json", *args]
        try:
            cp = self.run(argv, timeout=timeout, input=input, check=False)
        except RemoteError as exc:  # ssh's own failure or a timeout (or no interpreter here)
            cls = AgentProtocolError if exc.returncode == 127 else AgentUnreachable
            raise cls.from_remote(exc) from None
        data = _parse_json(cp.stdout)
        if isinstance(data, dict):
            self._note_remote_version(data)
        if cp.returncode == AGENT_REFUSED_EXIT and isinstance(data, dict) and data.get("error"):
            where = "" if self.is_local else f" (on {self.name})"
            hint = str(data.get("hint", ""))
            hint = hint if self.is_local else with_host_flag(hint, self.name)
            err = AgentRefused(f"{data['error']}{where}", hint, command=argv, returncode=cp.returncode,
                               stderr=cp.stderr)
            err.remote_type = str(data.get("type") or "MlconnectError")
            if err.remote_type == "UsageError":
                err.exit_code = 2
            raise err
        if cp.returncode != 0:
            # A killed ssh client (negative) did not get through; anything else answered, but not as the agent.
            cls = AgentUnreachable if cp.returncode < 0 else AgentProtocolError
            raise cls.from_remote(classify_command_failure(self, argv, cp.returncode, cp.stderr))
        if data is _NOT_JSON:
            raise AgentProtocolError(f"the mlconnect agent on {self.name} printed something that is not JSON",
                                     "a shell startup file or env line on the host may print to stdout; "
                                     "make it quiet for non-interactive shells",
                                     command=argv, returncode=cp.returncode, stderr=cp.stdout[-500:])
        return data

    # ---- version skew -------------------------------------------------------------------------

    def _note_remote_version(self, data: dict) -> None:
        """Remember the agent's version; the first mismatch per host in this process prints one warning."""
        version = data.get("mlconnect_version")
        if not isinstance(version, str) or self.is_local:
            return
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
        return bool(path) and evict_if_wedged(path)  # type: ignore[arg-type]

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


