"""The laptop's side of ``mlconnect sweep``: call the sweep agent here or on a box over ssh.

Mirrors :meth:`mlconnect.remote.ssh.Target.agent` for :mod:`mlconnect.sweeps.agent`: the agent's own
refusal (exit 3 with ``{"error", "hint"}``) becomes that one line; ssh's failures stay the
transport's errors. No torch or optuna import: the laptop needs neither to drive a sweep.
"""

from __future__ import annotations

from typing import Any

from mlconnect.errors import ExperimentError, RemoteError, UsageError
from mlconnect.remote.ssh import _NOT_JSON, _parse_json, classify_command_failure

AGENT_MODULE = "mlconnect.sweeps.agent"


def call(target: Any, verb: str, *args: str, timeout: float | None = 60) -> Any:
    from mlconnect.errors import AGENT_REFUSED_EXIT

    argv = [target.python, "-m", AGENT_MODULE, verb, "--json", *args]
    cp = target.run(argv, timeout=timeout, check=False)
    data = _parse_json(cp.stdout)
    if cp.returncode != 0:
        if cp.returncode == AGENT_REFUSED_EXIT and isinstance(data, dict) and data.get("error"):
            where = "" if target.is_local else f" (on {target.name})"
            cls = UsageError if data.get("type") == "UsageError" else ExperimentError
            raise cls(f"{data['error']}{where}", str(data.get("hint", "")))
        raise classify_command_failure(target, argv, cp.returncode, cp.stderr)
    if data is _NOT_JSON:
        raise RemoteError(f"the mlconnect sweep agent on {target.name} printed something that is not JSON",
                          "a shell startup file on the host may print to stdout; make it quiet",
                          command=argv, returncode=cp.returncode, stderr=cp.stdout[-500:])
    return data


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
