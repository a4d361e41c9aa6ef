"""Sweeps on this machine: real Optuna, real detached controller and workers, tiny real trainings."""

from __future__ import annotations

import json
import os

import optuna
import pytest
import yaml
from runs_support import cli_env, mlc, read_json, write_project, write_tiny_dataset

from mlconnect.sweeps import study as st
from mlconnect.sweeps import worker
from mlconnect.sweeps.space import parse_space, to_dict

pytestmark = pytest.mark.timeout(240)

SPACE = "learning_rate: {float: [1e-3, 1e-2], log: true}\nn_layers: {int: [1, 2]}\n" \
        "hidden_dropout_prob: {choice: [0.1, 0.3]}\n"


@pytest.fixture
def project(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    root = tmp_path / "proj"
    root.mkdir()
    write_project(root, data, epochs=2)
    (root / "space.yaml").write_text(SPACE)
    return root, cli_env(tmp_path)


def test_bad_inputs_are_one_line_and_leave_nothing(project):
    root, env = project
    (root / "bad.yaml").write_text("learnig_rate: {float: [1e-3, 1e-2]}\n")
    cp = mlc(["sweep", "start", "--config", "configs/tiny.yaml", "--space", "bad.yaml", "--trials", "2"], root, env,
             check=False)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 1 and len(lines) == 1, cp.stderr
    assert lines[0].startswith("error: bad.yaml: learnig_rate: ") and "did you mean 'learning_rate'" in lines[0]
    assert not (root / "sweeps").exists()
    cp = mlc(["sweep", "start", "--config", "configs/tiny.yaml", "--space", "space.yaml", "--sampler", "bayes"],
             root, env, check=False)
    assert cp.returncode == 2 and "--sampler 'bayes' is not one of tpe, random, grid" in cp.stderr
    (root / "experiments" / "old-t000").mkdir(parents=True)  # an earlier sweep's trial: never overwritten
    cp = mlc(["sweep", "start", "--config", "configs/tiny.yaml", "--space", "space.yaml", "--name", "old"], root, env,
             check=False)
    assert cp.returncode == 1 and "experiments from an earlier sweep named old exist (old-t000)" in cp.stderr
    cp = mlc(["sweep", "status", "nope"], root, env, check=False)
    assert cp.returncode == 1 and "unknown sweep 'nope'" in cp.stderr and len(cp.stderr.strip().splitlines()) == 1


def _spec(root, name, **kw):
    base = yaml.safe_load((root / "configs" / "tiny.yaml").read_text())
    spec = {"name": name, "base": base, "space": to_dict(parse_space(yaml.safe_load(SPACE))), "trials": 1,
            "parallel": 1, "seeds": [], "sampler": "random", "sampler_seed": 1, "prune": True,
            "metric": "mrr@10", "direction": "maximize", **kw}
    paths = st.sweep_paths(name, root)
    paths.root.mkdir(parents=True)
    (paths.spec).write_text(json.dumps(spec))
    return paths, spec, st.open_study(paths, spec, create=True)


def test_worker_prunes_on_the_median_and_records_the_epoch(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    paths, spec, study = _spec(root, "p", trials=2, prune_startup_trials=1, prune_warmup_epochs=0)
    d = optuna.distributions  # one earlier trial whose curve no tiny run can reach
    dists = {"learning_rate": d.FloatDistribution(1e-3, 1e-2, log=True), "n_layers": d.IntDistribution(1, 2),
             "hidden_dropout_prob": d.CategoricalDistribution([0.1, 0.3])}
    study.add_trial(optuna.trial.create_trial(value=0.99, intermediate_values={1: 0.99, 2: 0.99},
                                              params={"learning_rate": 0.005, "n_layers": 1,
                                                      "hidden_dropout_prob": 0.1}, distributions=dists))
    assert worker.work(str(paths.root), 0) == 0
    t = study.get_trials()[-1]
    assert t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["pruned_at"] == 1
    exp = root / "experiments" / f"p-t{t.number:03d}"
    assert read_json(exp / "progress.json")["state"] == "pruned"
    assert read_json(exp / "sweep.json")["pruned_at"] == 1
    assert sum(st.counted(x) for x in study.get_trials()) == 2  # the budget, not one more


def test_seeds_train_each_config_once_per_seed_and_report_the_mean(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    paths, spec, study = _spec(root, "m", seeds=[11, 12], prune=False)
    assert worker.work(str(paths.root), 0) == 0
    t = study.get_trials()[0]
    names = ["m-t000-s11", "m-t000-s12"]
    assert t.user_attrs["experiments"] == names
    vals = [read_json(root / "experiments" / n / "results" / "metrics.json")["best_valid"]["mrr@10"] for n in names]
    assert yaml.safe_load((root / "experiments" / names[1] / "config.yaml").read_text())["seed"] == 12
    assert t.value == pytest.approx(sum(vals) / 2) and t.user_attrs["seed_values"] == vals
    assert not os.environ.get("MLCONNECT_SWEEP_THREADS")
