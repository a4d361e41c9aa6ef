"""MLflow tracking into a real local file store, read back with MLflow's own client."""

from __future__ import annotations

import json

import pytest
from tests.conftest import need_or_skip

from mlconnect.engine.tracking import make_tracker


def test_no_uri_no_tracker(tmp_path):
    assert make_tracker({"mlflow_tracking_uri": None}, tmp_path / "exp") is None


def test_file_store_round_trip(tmp_path, monkeypatch):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        need_or_skip(False, "mlflow not installed (pip install 'mlconnect[mlflow]')")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    exp_dir = tmp_path / "exp_001"
    (exp_dir / "results").mkdir(parents=True)
    cfg = {"mlflow_tracking_uri": str(store), "dataset": "toy", "model": "SASRec", "hidden_size": 16,
           "eval_args": {"mode": "full"}}
    tr = make_tracker(cfg, exp_dir)
    assert tr is not None
    tr.log_params(cfg)
    for epoch, (loss, ndcg) in enumerate([(7.5, 0.02), (7.1, 0.04)], start=1):
        tr.log_metrics({"train/loss": loss, "ndcg@10": ndcg}, step=epoch)
    results = exp_dir / "results" / "metrics.json"
    results.write_text(json.dumps({"best_valid": {"ndcg@10": 0.04}}))
    tr.log_artifact(results)
    tr.finish("finished")

    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    exp = client.get_experiment_by_name("toy")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "exp_001"
    assert run.data.params["hidden_size"] == "16" and run.data.params["model"] == "SASRec"
    hist = client.get_metric_history(run.info.run_id, "ndcg_at_10")
    assert [(m.step, m.value) for m in hist] == [(1, 0.02), (2, 0.04)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["metrics.json"]


def test_env_without_variable_is_one_clear_error(tmp_path, monkeypatch):
    from mlconnect.errors import MlconnectError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(MlconnectError, match="MLFLOW_TRACKING_URI is not set"):
        make_tracker({"mlflow_tracking_uri": "env"}, tmp_path)


def test_real_training_logs_to_file_store(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    from mlconnect.data.synth import generate

    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        need_or_skip(False, "mlflow not installed (pip install 'mlconnect[mlflow]')")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    generate(tmp_path / "data", "tiny", n_users=120, n_items=80, n_interactions=4000, seed=3)
    store = tmp_path / "mlruns"
    subprocess.run([sys.executable, "-m", "mlconnect", "train", "--data-path", str(tmp_path / "data"),
                    "--dataset", "tiny", "--experiment", "run1", "--set", "epochs=2",
                    "--set", "train_batch_size=100", "--set", "hidden_size=16", "--set", "inner_size=32",
                    "--set", "num_threads=1", "--set", f"mlflow_tracking_uri={store}"],
                   cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), check=True,
                   capture_output=True, timeout=300)
    client = MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["hidden_size"] == "16"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert "metrics.json" in [a.path for a in client.list_artifacts(run.info.run_id)]
