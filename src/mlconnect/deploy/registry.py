"""Optional: an exported bundle becomes an MLflow model version (``mlflow_tracking_uri`` in the config).

The bundle folder is logged as the artifacts of a run named after the export, and registered under
``<model>-<dataset>`` (so retrained exports of one recommender stack up as versions 1, 2, ...), with
the card's verification result and provenance as tags. Same URI rules as training's tracking
(engine.tracking.resolve_uri: a path, a URI or ``env``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlconnect.errors import MlconnectError


def register_bundle(uri_value: str, bundle: Path, card: dict[str, Any], experiment: str | None) -> dict[str, Any]:
    """Log ``bundle`` and register it; ``{"registered_model", "version", "run_id", "source"}``."""
    from mlconnect.engine.tracking import resolve_uri

    uri = resolve_uri(uri_value)
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MlconnectError("mlflow_tracking_uri is set but mlflow is not installed",
                             "pip install 'mlconnect[mlflow]', or remove mlflow_tracking_uri from the config") from None
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # see engine/tracking.py
    # create_model_version looks the run up through mlflow's process-wide URIs, whose default is a
    # sqlite mlflow.db in the current folder: point them at the configured store, or a stray
    # database appears wherever `mlconnect export` was typed.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = experiment or str(card["dataset"])
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    v = card["verification"]
    tags = {"mlconnect.experiment": str(card["experiment"]), "mlconnect.format": str(card["format"]),
            "mlconnect.git_commit": str(card["git_commit"]), "mlconnect.version": str(card["mlconnect_version"]),
            "mlconnect.verified_users": str(v["users"]), "mlconnect.max_abs_score_diff": str(v["max_abs_score_diff"])}
    run = client.create_run(exp_id, run_name=f"export {card['experiment']}", tags=tags)
    try:
        client.log_artifacts(run.info.run_id, str(bundle), "bundle")
        model = f"{card['model']}-{card['dataset']}"
        if client.search_registered_models(filter_string=f"name = '{model}'") == []:
            client.create_registered_model(model, description="exported by `mlconnect export`")
        source = f"{run.info.artifact_uri}/bundle"
        mv = client.create_model_version(model, source=source, run_id=run.info.run_id, tags=tags,
                                         description=f"{card['model']} on {card['dataset']} from {card['experiment']}")
        client.set_terminated(run.info.run_id)
    except BaseException:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    return {"registered_model": model, "version": int(mv.version), "run_id": run.info.run_id, "source": source}
