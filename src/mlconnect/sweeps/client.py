"""The laptop's side of ``mlconnect sweep``: call the sweep agent here or on a box over ssh.

The same protocol as :mod:`mlconnect.runs.agent`, through :meth:`mlconnect.remote.ssh.Target.agent`:
the agent's own refusal is ``AgentRefused`` with the host's words (a usage error keeps exit 2);
ssh's failures are ``AgentUnreachable``, a host without mlconnect ``AgentProtocolError``. No torch
or optuna import: the laptop needs neither to drive a sweep.
"""

from __future__ import annotations

from typing import Any

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
