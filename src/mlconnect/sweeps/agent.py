"""The host side of ``mlconnect sweep``: ``python -m mlconnect.sweeps.agent <verb> --json ...``.

Same contract as :mod:`mlconnect.runs.agent` (one JSON document on stdout; a deliberate error is
``{"error", "hint", "type"}``, one line on stderr and exit 3), so the laptop's ``Target.agent``
handles both (``module=``). Runs in the project root, here or on the box.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlconnect.sweeps.agent")
    sub = p.add_subparsers(dest="verb", required=True)

    def verb(name: str, with_name: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name)
        sp.add_argument("--json", action="store_true")
        if with_name:
            sp.add_argument("--name", required=True)
        return sp

    s = verb("start")
    s.add_argument("--config")
    s.add_argument("--space", required=True)
    s.add_argument("--trials", type=int, required=True)
    s.add_argument("--parallel", type=int, default=1)
    s.add_argument("--seeds", default="")
    s.add_argument("--sampler", default="tpe")
    s.add_argument("--sampler-seed", type=int)
    s.add_argument("--no-prune", action="store_true")
    s.add_argument("--gpus", default=None)
    s.add_argument("--set", action="append", default=[])
    s.add_argument("--boxes", default=None, help="--hosts: JSON list, this box first (sweeps.client.box_entry)")
    verb("resume")
    verb("stop").add_argument("--grace", type=float, default=30.0)
    verb("status")
    verb("best")
    verb("plot")
    verb("list", with_name=False)
    return p


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        from mlconnect.errors import UsageError

        raise UsageError(f"{what} {text!r} is not a comma-separated list of integers", "e.g. 2020,2021") from None


def run(a: argparse.Namespace) -> Any:
    from mlconnect.sweeps import service

    if a.verb == "start":
        from mlconnect.engine.config import parse_overrides

        return service.start(name=a.name, config=a.config, space_path=a.space, trials=a.trials,
                             overrides=parse_overrides(a.set), parallel=a.parallel,
                             seeds=_ints(a.seeds, "--seeds"), sampler=a.sampler, prune=not a.no_prune,
                             gpus=_ints(a.gpus, "--gpus"), sampler_seed=a.sampler_seed,
                             boxes=json.loads(a.boxes) if a.boxes else None)
    if a.verb == "stop":
        return service.stop(a.name, a.grace)
    if a.verb == "list":
        return {"sweeps": service.list_sweeps()}
    return {"resume": service.resume, "status": service.status, "best": service.best,
            "plot": service.plots}[a.verb](a.name)


def main(argv: list[str] | None = None) -> int:
    from mlconnect.runs.agent import reply  # the one agent protocol (error shape, exit 3, version)

    args = build_parser().parse_args(argv)
    return reply(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
