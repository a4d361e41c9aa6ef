"""Optional extras a host needs for some commands: check for them, and install them on demand.

`mlconnect bootstrap` installs mlconnect with the ``serve`` extra only. A sweep also needs Optuna
(the ``sweep`` extra) on the box that runs it: ``mlconnect sweep start --host`` calls
:func:`ensure_extra` first (one ssh round trip when the box has it), and
``mlconnect bootstrap --extra sweep`` installs it up front. The requirement strings come from this
mlconnect's own metadata (pyproject's optional-dependencies), so the laptop and the box agree on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mlconnect.errors import MlconnectError, RemoteError, UsageError

# extra -> the module whose import proves it is installed
EXTRA_MODULES = {"sweep": "optuna"}

# exit 0: importable; 3: missing from a venv; 4: missing from a python that is no venv (left alone)
HAS_MODULE = ("import importlib.util, sys; sys.exit(0 if importlib.util.find_spec(sys.argv[1]) else "
              "3 if sys.prefix != getattr(sys, 'base_prefix', sys.prefix) else 4)")


def check_extras(extras: list[str] | tuple[str, ...]) -> list[str]:
    """The extras a host can be asked for; one error line for any other name."""
    for e in extras:
        if e not in EXTRA_MODULES:
            raise UsageError(f"--extra {e!r} is not an extra a host needs", f"pick from: {', '.join(EXTRA_MODULES)}")
    return list(dict.fromkeys(extras))


def extra_requirements(extra: str, requires: list[str] | None = None) -> list[str]:
    """pip's requirement strings for ``extra`` (``["optuna>=4.0"]`` for sweep), from ``requires``:
    this mlconnect's metadata lines, e.g. ``'optuna>=4.0; extra == "sweep"'``."""
    if requires is None:
        from importlib.metadata import requires as dist_requires

        requires = dist_requires("mlconnect") or []
    marker = re.compile(r"""\bextra\s*==\s*["']""" + re.escape(extra) + r"""["']""")
    found = [spec.strip() for spec, _, env in (r.partition(";") for r in requires) if marker.search(env)]
    if not found:
        raise MlconnectError(f"this mlconnect's metadata names no requirements for the {extra!r} extra",
                             "reinstall mlconnect here (`pip install -e .`), then try again")
    return found


def extra_state(target: Any, python: str, extra: str) -> str:
    """``present``, ``missing`` (from a venv) or ``missing-system``: whether ``python`` on the host finds the
    extra's module (found, not imported: no side effects)."""
    from mlconnect.remote.failures import classify_command_failure

    argv = [python, "-c", HAS_MODULE, EXTRA_MODULES[extra]]
    cp = target.run(argv, timeout=60, check=False, cwd="~")
    if cp.returncode in (0, 3, 4):
        return {0: "present", 3: "missing", 4: "missing-system"}[cp.returncode]
    raise classify_command_failure(target, argv, cp.returncode, cp.stderr)


def has_extra(target: Any, python: str, extra: str) -> bool:
    return extra_state(target, python, extra) == "present"


def install_extra(target: Any, python: str, extra: str, log: Callable[[str], None]) -> None:
    from mlconnect.remote.bootstrap import PIP_TIMEOUT_S, pip_argv, stream

    reqs = extra_requirements(extra)
    stream(target, pip_argv(python, *reqs), what=f"pip install {' '.join(reqs)}", timeout=PIP_TIMEOUT_S, log=log)


def ensure_extra(target: Any, extra: str, log: Callable[[str], None] = lambda _m: None) -> bool:
    """Make the host's python able to run ``mlconnect <extra>``; True when it had to install it.

    One error line when it cannot, naming the missing module and what to do.
    """
    module, py = EXTRA_MODULES[extra], target.python
    state = extra_state(target, py, extra)
    if state == "present":
        return False
    again = f"`mlconnect bootstrap --host {target.name} --extra {extra}`"
    if state == "missing-system":  # never pip into the host's own Python: that is what the venv is for
        raise RemoteError(f"{module} (the `{extra}` extra) is not installed for {py} on {target.name}, "
                          "which is not a venv", f"run {again}: it makes one with mlconnect and {module}")
    log(f"{module} (the `{extra}` extra) is not installed for {py} on {target.name}: installing it")
    try:
        install_extra(target, py, extra, log)
    except MlconnectError as exc:
        raise RemoteError(f"{module} (the `{extra}` extra) is not installed on {target.name} and installing it "
                          f"failed: {exc.message}", f"{exc.hint}, then run {again}" if exc.hint
                          else f"run {again} once the host can install it") from None
    if not has_extra(target, py, extra):
        raise RemoteError(f"pip installed {module} on {target.name}, but {py} still does not import it",
                          "check the host's PYTHONPATH and env lines in mlconnect.toml")
    return True
