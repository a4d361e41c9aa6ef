"""Optional MLflow tracking: params, per-epoch metrics and the results file, when a config asks.

Opt-in by config key ``mlflow_tracking_uri`` (already a config default, ``None``):

* a URI (``file:///abs/mlruns``, ``http://localhost:5000`` through ``mlconnect tunnel --port 5000``);
* a plain path (``mlruns``): a local file store, made absolute against the current directory;
* ``env``: take ``MLFLOW_TRACKING_URI`` from the environment (an error if it is not set).

``mlflow_experiment`` names the MLflow experiment (default: the dataset name). mlflow is imported
inside :func:`make_tracker` only, so the engine does not pay for it unless asked.

MLflow 3.x refuses the file store unless ``MLFLOW_ALLOW_FILE_STORE=true``; the file store is the
one backend ``mlflow-skinny`` can use without SQLAlchemy, so we set that variable (setdefault) for
``file:`` URIs. Readers (``MlflowClient``, ``mlflow ui``) need the same variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlconnect.errors import MlconnectError


def resolve_uri(value: str) -> str:
    """The tracking URI a config value means (see the module docstring)."""
    if value == "env":
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if not env:
            raise MlconnectError("mlflow_tracking_uri is 'env' but MLFLOW_TRACKING_URI is not set",
                                 "export MLFLOW_TRACKING_URI, or put the URI in the config")
        return env
    if "://" in value or value.startswith("file:"):
        return value
    return Path(value).expanduser().resolve().as_uri()


class Tracker:
    """One MLflow run per training run; every call goes through ``MlflowClient`` (no global state)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        # MLflow params are strings of bounded length; nested config values become their repr.
        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        # "@" is not allowed in MLflow metric names: ndcg@10 -> ndcg_at_10.
        items = [Metric(str(k).replace("@", "_at_"), float(v), ts, int(step))
                 for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_artifact(self, path: str | os.PathLike[str]) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def finish(self, state: str) -> None:
        """``state``: the run's final state (finished / stopped / failed) -> MLflow run status."""
        status = {"finished": "FINISHED", "succeeded": "FINISHED", "stopped": "KILLED"}.get(state, "FAILED")
        self.client.set_terminated(self.run_id, status)


def make_tracker(cfg: dict, experiment_dir: str | os.PathLike[str]) -> Tracker | None:
    """A Tracker when ``cfg["mlflow_tracking_uri"]`` is set, else None."""
    value = cfg.get("mlflow_tracking_uri")
    if not value:
        return None
    uri = resolve_uri(str(value))
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlconnectError("mlflow_tracking_uri is set but mlflow is not installed",
                             "pip install 'mlconnect[mlflow]', or remove mlflow_tracking_uri "
                             "from the config") from None
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=uri)
    name = str(cfg.get("mlflow_experiment") or cfg.get("dataset") or "mlconnect")
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run = client.create_run(exp_id, run_name=Path(experiment_dir).name,
                            tags={"mlconnect.experiment_dir": str(Path(experiment_dir).resolve())})
    return Tracker(client, run.info.run_id)
