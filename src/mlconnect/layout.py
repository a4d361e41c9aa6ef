"""Where things live inside ``experiments/<name>/`` — the one contract every part shares.

The engine writes these files, the runs layer adds ``status.json`` and ``gpu_usage.csv``, the
monitor, compare, pull and serve commands read them. Change a name here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EXPERIMENTS_DIR = "experiments"


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
