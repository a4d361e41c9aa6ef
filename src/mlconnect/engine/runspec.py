"""A training run, described once: the JSON the laptop sends to the host agent.

``mlconnect train --host`` (and ``--detach``/``--queue``, and ``resume``) builds a :class:`RunSpec`,
the agent validates it (:meth:`RunSpec.from_json`: one line naming the field) and writes it into the
experiment folder, and the supervisor starts ``python -m mlconnect.engine.run <that file>``; the same
file is what every DDP rank reads. Its shape, :class:`mlconnect.spec.Spec`, is shared with serving's
``ServeSpec`` and deploy's ``PredictJob``. Standard library only (the agent imports it on every call).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field

from mlconnect.errors import ExperimentError
from mlconnect.layout import check_experiment_name
from mlconnect.spec import Spec, SpecError

SPEC_FILE = "run_spec.json"  # in the experiment folder, next to status.json
_GPUS = re.compile(r"^\d+(,\d+)*$")


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
