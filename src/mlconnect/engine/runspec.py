"""A training run, described once: the JSON the laptop sends to the host agent.

``mlconnect train --host`` (and ``--detach``/``--queue``, and ``resume``) builds a :class:`RunSpec`,
the agent validates it (:meth:`RunSpec.from_json`: one line naming the field) and writes it into the
experiment folder, and the supervisor starts ``python -m mlconnect.engine.run <that file>``; the same
file is what every DDP rank reads. :class:`Spec` is the shape every such message shares (serving's
``ServeSpec`` and deploy's ``PredictJob`` too). Standard library only (the agent imports it on every call).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import NoReturn, TypeVar

from mlconnect.errors import ExperimentError, MlconnectError
from mlconnect.layout import check_experiment_name

SPEC_FILE = "run_spec.json"  # in the experiment folder, next to status.json
SPEC_VERSION = 1
_GPUS = re.compile(r"^\d+(,\d+)*$")
T = TypeVar("T", bound="Spec")


class SpecError(MlconnectError):
    """A spec the host cannot use (malformed, another version, a wrong field): one line naming the field."""


class Spec:
    """What the laptop sends a host entry point, as a frozen dataclass: ``to_json``/``from_json`` (the
    version checked, unknown fields refused, then the subclass's ``__post_init__`` checks the values)."""

    KIND = "spec"  # names the spec in its errors: "run spec: nproc is ..."

    def to_json(self) -> str:
        return json.dumps({"version": SPEC_VERSION, **asdict(self)}, sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls: type[T], text: str | bytes) -> T:
        """Parse and validate; every problem is one line (:class:`SpecError`)."""
        return parse_spec(cls, text, cls.KIND)  # type: ignore[attr-defined]

    @classmethod
    def bad(cls, problem: str) -> NoReturn:
        raise SpecError(f"{cls.KIND}: {problem}", _HINT)


@dataclass(frozen=True)
class RunSpec(Spec):
    """What to train and how: the options of ``mlconnect train``, and nothing host-specific."""

    KIND = "run spec"

    experiment: str
    config: str | None = None      # a path inside the project on the host
    model: str | None = None
    dataset: str | None = None
    data_path: str | None = None
    overrides: tuple[str, ...] = ()  # --set KEY=VALUE, in order
    resume: bool = False
    force: bool = False
    queue: bool = False            # wait for the GPU (FIFO) before starting
    nproc: int | None = None       # DDP: ranks (torchrun)
    gpus: str | None = None        # DDP: one rank per listed GPU ("0,1")
    env: dict[str, str] = field(default_factory=dict)  # MLCONNECT_* settings for this run only

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """One :class:`SpecError` (or the experiment-name error) for the first wrong field."""
        try:
            check_experiment_name(self.experiment)
        except ExperimentError as exc:
            raise SpecError(f"run spec: experiment: {exc.message}", exc.hint) from None
        for name in ("config", "model", "dataset", "data_path", "gpus"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                self.bad(f"{name} is not a non-empty string")
        for name in ("resume", "force", "queue"):
            if not isinstance(getattr(self, name), bool):
                self.bad(f"{name} is not true or false")
        if not isinstance(self.overrides, tuple) or not all(
                isinstance(o, str) and "=" in o and o.split("=", 1)[0].strip() for o in self.overrides):
            self.bad("overrides is not a list of KEY=VALUE strings")
        if self.nproc is not None and (isinstance(self.nproc, bool) or not isinstance(self.nproc, int)
                                       or self.nproc < 1):
            self.bad("nproc is not a whole number of at least 1")
        if self.gpus is not None and not _GPUS.match(self.gpus):
            self.bad("gpus is not a comma-separated list of GPU numbers (e.g. 0,1)")
        if not isinstance(self.env, dict) or not all(
                isinstance(k, str) and k.startswith("MLCONNECT_") and isinstance(v, str)
                for k, v in self.env.items()):
            self.bad("env is not a map of MLCONNECT_NAME to string values")

    def as_train_options(self) -> str:
        """The same run as ``mlconnect train`` options, for the log line a person reads."""
        argv = ["--experiment", self.experiment]
        for flag, value in (("--config", self.config), ("--model", self.model), ("--dataset", self.dataset),
                            ("--data-path", self.data_path), ("--nproc", self.nproc), ("--gpus", self.gpus)):
            argv += [flag, str(value)] if value else []
        argv += [a for ov in self.overrides for a in ("--set", ov)]
        return shlex.join(argv + [f for f, on in (("--resume", self.resume), ("--force", self.force)) if on])


def parse_spec(cls: type[T], text: str | bytes, what: str) -> T:
    """A spec dataclass from its JSON (``version`` checked, unknown fields refused); the class's own
    ``__post_init__`` checks the values. Every problem is one :class:`SpecError` line."""
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{what} is not JSON: {exc}", _HINT) from None
    if not isinstance(doc, dict):
        raise SpecError(f"{what} is a JSON {type(doc).__name__}, not an object", _HINT)
    doc = dict(doc)
    version = doc.pop("version", SPEC_VERSION)
    if version != SPEC_VERSION:
        raise SpecError(f"{what} version {version!r} is not {SPEC_VERSION}", _SKEW)
    unknown = sorted(set(doc) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise SpecError(f"{what} has unknown field(s): {', '.join(unknown)}", _SKEW)
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING  # type: ignore[arg-type]
               and f.name not in doc]
    if missing:
        raise SpecError(f"{what} has no {missing[0]}", _HINT)
    for f in fields(cls):  # type: ignore[arg-type]
        if isinstance(doc.get(f.name), list):
            doc[f.name] = tuple(doc[f.name])  # JSON has no tuples
    return cls(**doc)


_HINT = "this is a bug in the client: run the same mlconnect version on both sides"
_SKEW = "run the same mlconnect version here and on the host (`mlconnect bootstrap`)"

