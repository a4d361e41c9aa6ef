"""Issue 10, failures 1 and 5: an experiment name can never reach outside ``experiments/``, and
``--resume`` before the first checkpoint is not a circle of advice.

Real CLI processes on a real project folder; nothing mocked.
"""

from __future__ import annotations

import pytest
from runs_support import cli_env, mlc, put, read_json, tiny_project

from mlconnect.errors import ExperimentError
from mlconnect.layout import check_experiment_name, remove_experiment

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def project(tmp_path):
    root = tiny_project(tmp_path, epochs=1)
    put(root / "experiments" / "other" / "config.yaml", "model: SASRec\n")
    put(tmp_path / "victim" / "keep.txt", "precious")
    return root, cli_env(tmp_path)


def _files(base):
    return sorted(str(p.relative_to(base)) for p in base.rglob("*"))


# Every case stays inside tmp_path even where a regression deleted it (the absolute one too).
@pytest.mark.parametrize(("name", "mode"), [(n, []) for n in ("../victim", ".", "..", "ABS", "a\nb")]
                         + [(n, ["--detach"]) for n in ("../victim", "..")])
def test_force_with_a_name_outside_experiments_deletes_nothing(project, tmp_path, name, mode):
    root, env = project
    name = str(tmp_path / "victim") if name == "ABS" else name
    before = _files(tmp_path)
    cp = mlc(["train", *mode, "--config", "configs/tiny.yaml", "-e", name, "--force"], root, env,
             check=False, timeout=60)
    assert cp.returncode != 0
    lines = cp.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid experiment name"), cp.stderr
    assert _files(tmp_path) == before
    assert (tmp_path / "victim" / "keep.txt").read_text() == "precious"


def test_the_validator_and_remove_experiment(tmp_path):
    for bad in ("", ".", "..", "../x", "a/b", "a\\b", "/abs", ".hidden", "-rf", "a\x00b", "x" * 200):
        with pytest.raises(ExperimentError):
            check_experiment_name(bad)
    assert check_experiment_name("sasrec_ml-100k_20261128-181500") == "sasrec_ml-100k_20261128-181500"
    # A folder that is not an experiment, or not directly under experiments/, is never removed.
    plain = put(tmp_path / "experiments" / "notes" / "todo.txt", "x").parent
    outside = put(tmp_path / "elsewhere" / "config.yaml", "x").parent
    for folder in (plain, outside):
        with pytest.raises(ExperimentError, match="refusing to delete"):
            remove_experiment(folder)
        assert folder.is_dir()
    real = put(tmp_path / "experiments" / "real" / "config.yaml", "x").parent
    remove_experiment(real)
    assert not real.exists()


@pytest.mark.slow  # several real trainings
def test_resume_before_the_first_checkpoint_starts_from_scratch(project):
    """A run killed before its first checkpoint leaves config, progress and log, no checkpoint."""
    root, env = project
    exp = root / "experiments" / "early"
    put(exp / "config.yaml", (root / "configs" / "tiny.yaml").read_text())
    put(exp / "progress.json", '{"state": "running", "epoch": 0, "step": 3}')
    put(exp / "training.log", "training SASRec on tiny\n")
    plain = mlc(["train", "-e", "early"], root, env, check=False, timeout=60)
    assert plain.returncode == 1 and "--resume" in plain.stderr
    cp = mlc(["train", "-e", "early", "--resume"], root, env, timeout=120)
    assert "no checkpoint yet" in cp.stderr and "from scratch" in cp.stderr
    assert read_json(exp / "progress.json")["state"] == "finished"
    assert (exp / "checkpoints" / "last.pt").is_file()
    assert "starting it from scratch" in (exp / "training.log").read_text()
