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
