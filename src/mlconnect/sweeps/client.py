"""The laptop's side of ``mlconnect sweep``: call the sweep agent here or on a box over ssh.

The same protocol as :mod:`mlconnect.runs.agent`, through :meth:`mlconnect.remote.ssh.Target.agent`:
the agent's own refusal is ``AgentRefused`` with the host's words (a usage error keeps exit 2);
ssh's failures are ``AgentUnreachable``, a host without mlconnect ``AgentProtocolError``. No torch
or optuna import: the laptop needs neither to drive a sweep.
"""

from __future__ import annotations

from typing import Any

from mlconnect.errors import UsageError

AGENT_MODULE = "mlconnect.sweeps.agent"


def call(target: Any, verb: str, *args: str, timeout: float | None = 60) -> Any:
    """The sweep agent's answer; its failures are the typed AgentError tree (``Target.agent``)."""
    return target.agent(verb, *args, timeout=timeout, module=AGENT_MODULE)


def start_args(*, name: str, config: str | None, space: str, trials: int, parallel: int, seeds: str | None,
               sampler: str, prune: bool, gpus: str | None, sets: list[str]) -> list[str]:
    """The agent's ``start`` arguments (pure; unit-tested)."""
    args = ["--name", name, "--space", space, "--trials", str(trials), "--parallel", str(parallel),
            "--sampler", sampler]
    if config:
        args += ["--config", config]
    if seeds:
        args += ["--seeds", seeds]
    if gpus:
        args += ["--gpus", gpus]
    if not prune:
        args.append("--no-prune")
    for s in sets:
        args += ["--set", s]
    return args


# ---------------------------------------------------------------------------------------- --hosts


def known_host(name: str, ssh_config: str | None) -> bool:
    """``name`` is a ``[hosts.NAME]`` in mlconnect.toml, a ``Host`` alias the ssh config gives another
    ``HostName``, or a name the resolver knows (a ``Host *`` block alone does not make a name known)."""
    import socket
    import subprocess
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from mlconnect.remote.ssh import resolve_target

    t = resolve_target(name, ssh_config=ssh_config)
    if t.is_local or t.host is not None:
        return True
    cfg = t.ssh_config or str(Path.home() / ".ssh" / "config")
    if Path(cfg).is_file():
        out = subprocess.run(["ssh", "-F", cfg, "-G", name], capture_output=True, text=True, timeout=10,
                             stdin=subprocess.DEVNULL).stdout
        if any(line.split()[1:2] not in ([name], [name.lower()]) for line in out.splitlines()
               if line.startswith("hostname ")):
            return True
    pool = ThreadPoolExecutor(1)  # the resolver has no timeout of its own
    try:
        return bool(pool.submit(socket.getaddrinfo, name, 22).result(timeout=5))
    except Exception:  # noqa: BLE001  (not resolvable, or not within 5 s: unknown either way)
        return False
    finally:
        pool.shutdown(wait=False)


def resolve_boxes(hosts: str, host: str | None, ssh_config: str | None) -> list[Any]:
    """``--hosts a,b`` -> their Targets, the first one holding the study; each bad input is one line."""
    from mlconnect.remote.ssh import resolve_target

    if host:
        raise UsageError("--host and --hosts together", "--hosts a,b alone: the study lives on the first one")
    names = [h.strip() for h in hosts.split(",") if h.strip()]
    if not names or len(set(names)) != len(names):
        raise UsageError(f"--hosts {hosts!r} must name distinct boxes", "e.g. --hosts box1,box2")
    for name in names:
        if name in ("local", "localhost-local") or not known_host(name, ssh_config):
            raise UsageError(f"unknown host {name!r} in --hosts",
                             f"add [hosts.{name}] to mlconnect.toml or a `Host {name}` block to your ssh config")
    return [resolve_target(n, ssh_config=ssh_config) for n in names]


def box_entry(t: Any, data_path: bool) -> dict[str, Any]:
    """How the first box reaches box ``t`` (mlconnect.toml's entry), for :mod:`mlconnect.sweeps.relay`;
    ``data_path``: its own data_path from mlconnect.toml (unless --data-path named one for all)."""
    h = t.host
    return {"name": t.name, "remote_root": t.remote_root, "python": t.python, "env": t.env,
            "ssh_config": t.ssh_config,
            **{k: getattr(h, k, None) for k in ("hostname", "port", "user", "identity_file")},
            "data_path": (h.data_path if h is not None and data_path else None)}


TRIAL_RE = r"^(?P<sweep>.+)-t\d{3,}(-s\d+)?$"


def pull_trial(target: Any, name: str, root: Any, checkpoints: str) -> tuple[Any, Any]:
    """``pull NAME``: from ``target``; a sweep trial it does not hold comes from the box that ran it
    (the study on ``target`` records each trial's box). Returns (target used, folder)."""
    import re

    from mlconnect.errors import AgentRefused
    from mlconnect.remote.ssh import resolve_target
    from mlconnect.runs.client import pull

    try:
        return target, pull(target, name, root, checkpoints)
    except AgentRefused:
        m = re.match(TRIAL_RE, name)
        if m is None or target.is_local:
            raise
        try:
            res = call(target, "status", "--name", m.group("sweep"))
        except AgentRefused:  # no such sweep there either
            raise AgentRefused(f"unknown experiment {name!r} on {target.name}, nor a trial of a sweep there",
                               f"`mlconnect ps --host {target.name}` lists them") from None
        boxes = {t.get("box") for t in res["trials"] if name in (t.get("experiments") or [])} - {None, target.name}
        if not boxes:
            raise
        other = resolve_target(sorted(boxes)[0], ssh_config=target.ssh_config)
        return other, pull(other, name, root, checkpoints)
