"""Where things live inside ``experiments/<name>/`` — the one contract every part shares.

The engine writes these files, the runs layer adds ``status.json`` and ``gpu_usage.csv``, the
monitor, compare, pull and serve commands read them. Change a name here and nowhere else.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mlconnect.errors import ExperimentError

EXPERIMENTS_DIR = "experiments"
NAME_MAX = 128
# Files only mlconnect writes into an experiment folder: one of them must be there before
# --force may delete the folder (config.yaml alone is what `exp create` leaves).
MARKER_FILES = ("config.yaml", "status.json", "progress.json", "meta.json")


@dataclass(frozen=True)
class ExperimentPaths:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:  # the fully resolved config
        return self.root / "config.yaml"

    @property
    def log(self) -> Path:  # everything the trainer prints
        return self.root / "training.log"

    @property
    def tensorboard(self) -> Path:  # event files
        return self.root / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, which: str) -> Path:  # which: "last" or "best"
        return self.checkpoints / f"{which}.pt"

    def checkpoint_meta(self, which: str) -> Path:
        return self.checkpoints / f"{which}.json"

    @property
    def vocab(self) -> Path:  # raw item/user ids in internal-id order, for serving
        return self.checkpoints / "vocab.json"

    @property
    def progress(self) -> Path:  # rewritten atomically during training
        return self.root / "progress.json"

    @property
    def results(self) -> Path:  # best valid + test metrics, wall time, throughput
        return self.root / "results" / "metrics.json"

    @property
    def meta(self) -> Path:  # git commit, host, versions, device, times
        return self.root / "meta.json"

    @property
    def status(self) -> Path:  # written by the runs layer: pid, state, heartbeat
        return self.root / "status.json"

    @property
    def gpu_usage(self) -> Path:  # sampled by the runs layer
        return self.root / "gpu_usage.csv"


def check_experiment_name(name: str) -> str:
    """The one rule for an experiment name, here and on the host: a plain folder name.

    It becomes ``experiments/<name>``, which ``--force`` deletes, so anything that could point
    elsewhere (separators, ``.``/``..``, absolute paths, control characters) is refused.
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = "is empty"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif name.startswith("."):
        problem = "starts with '.'"
    elif name.startswith("-"):
        problem = "starts with '-'"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "contains a control character"
    elif len(name) > NAME_MAX:
        problem = f"is longer than {NAME_MAX} characters"
    if problem:
        raise ExperimentError(f"invalid experiment name {name!r}: it {problem}",
                              "use a plain folder name such as exp_001")
    return name


def is_experiment_dir(root: Path) -> bool:
    """A real folder (not a link) holding at least one file only mlconnect writes."""
    return root.is_dir() and not root.is_symlink() and any((root / m).is_file() for m in MARKER_FILES)


def remove_experiment(root: str | Path) -> None:
    """``--force``: delete an experiment folder, and never anything else.

    Only a folder that is an mlconnect experiment and sits directly in an ``experiments/``
    folder goes; anything else is refused with one line, whatever name led here.
    """
    root = Path(root)
    if not root.exists():
        return
    parent = root.resolve().parent
    if root.is_symlink() or parent.name != EXPERIMENTS_DIR or not is_experiment_dir(root):
        raise ExperimentError(f"refusing to delete {root}: --force only removes an mlconnect "
                              f"experiment folder directly inside {EXPERIMENTS_DIR}/",
                              "delete that folder yourself if you mean it, or pick another name")
    shutil.rmtree(root)


def experiment_paths(name_or_path: str | Path, base: str | Path = EXPERIMENTS_DIR) -> ExperimentPaths:
    """``exp_001`` -> ``experiments/exp_001``; a path with a separator is taken as is."""
    p = Path(name_or_path)
    if p.is_absolute() or len(p.parts) > 1:
        return ExperimentPaths(p)
    return ExperimentPaths(Path(base) / p)


def default_experiment_name(model: str, dataset: str) -> str:
    """``sasrec_ml-100k_20261128-181500``: sortable, readable, unique enough for one person."""
    from datetime import datetime

    return f"{model.lower()}_{dataset}_{datetime.now():%Y%m%d-%H%M%S}"
