"""A run stopped on the last step of an epoch resumes (its checkpoint says: this epoch's steps are all
done). Seen in the two-box sweep test: a requeued trial crashed on resume with an AttributeError."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from mlconnect.data.synth import generate
from mlconnect.engine.config import load_config
from mlconnect.engine.interrupts import TrainingInterrupted
from mlconnect.engine.trainer import train
from mlconnect.fileio import read_json


def test_a_stop_on_an_epochs_last_step_resumes(tmp_path: Path) -> None:
    generate(tmp_path / "data", "tiny", n_users=60, n_items=40, n_interactions=1200, seed=3)
    # One step per epoch: wherever the stop lands, it is on an epoch's last step.
    cfg = load_config(None, {"model": "SASRec", "dataset": "tiny", "data_path": str(tmp_path / "data"), "epochs": 3,
                             "train_batch_size": 100_000, "hidden_size": 16, "inner_size": 32, "num_threads": 1,
                             "device": "cpu", "progress_interval_s": 0})
    exp = tmp_path / "exp"

    def stop_after_first_epoch(epoch: int, value: float) -> None:
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # noted by the trainer, acted on at the next step's end

    with pytest.raises(TrainingInterrupted):
        train(cfg, exp, on_eval=stop_after_first_epoch)
    ck = read_json(exp / "checkpoints" / "last.json")
    assert ck["step"] >= 1 and (ck["epoch"], ck["step"]) != (0, 0)
    results = train(cfg, exp, resume=True)
    assert results["epochs"] == 3


def test_a_resume_that_changes_the_model_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    # It was a state_dict size-mismatch traceback, after config.yaml had been rewritten with the new
    # value: from then on even a plain resume of that experiment failed.
    from mlconnect.errors import ExperimentError

    generate(tmp_path / "data", "tiny", n_users=60, n_items=40, n_interactions=1200, seed=3)
    base = {"model": "SASRec", "dataset": "tiny", "data_path": str(tmp_path / "data"), "epochs": 1,
            "train_batch_size": 100_000, "hidden_size": 16, "inner_size": 32, "num_threads": 1,
            "device": "cpu", "progress_interval_s": 0}
    exp = tmp_path / "exp"
    train(load_config(None, base), exp)
    before = {p: p.read_bytes() for p in (exp / "config.yaml", exp / "results" / "metrics.json")}
    with pytest.raises(ExperimentError, match=r"hidden_size 16 -> 32"):
        train(load_config(None, {**base, "hidden_size": 32, "epochs": 2}), exp, resume=True)
    assert {p: p.read_bytes() for p in before} == before
    assert train(load_config(None, {**base, "epochs": 2}), exp, resume=True)["epochs"] == 2  # may run longer


@pytest.mark.parametrize("flag", ["force", "resume"])
def test_force_or_resume_of_an_experiment_being_trained_is_refused(tmp_path: Path, flag: str) -> None:
    # `train -e X --force` while X trained detached was an OSError traceback after deleting part of its files
    from mlconnect.engine.experiment import prepare_experiment
    from mlconnect.errors import ExperimentError
    from mlconnect.expstate import this_process
    from mlconnect.fileio import atomic_write_json

    exp = tmp_path / "experiments" / "exp"  # --force removes only a folder inside experiments/
    (exp / "checkpoints").mkdir(parents=True)
    (exp / "checkpoints" / "last.pt").write_bytes(b"kept")
    atomic_write_json(exp / "progress.json", {"state": "running", **this_process()})  # a live writer: us
    with pytest.raises(ExperimentError, match="is being trained right now"):
        prepare_experiment(load_config(None, {}), exp, resume=flag == "resume", force=flag == "force")
    assert (exp / "checkpoints" / "last.pt").read_bytes() == b"kept" and not (exp / "config.yaml").exists()
    atomic_write_json(exp / "progress.json", {"state": "running", **this_process(), "pid": 2**22 + 7})  # gone
    prepare_experiment(load_config(None, {}), exp, resume=flag == "resume", force=flag == "force")
