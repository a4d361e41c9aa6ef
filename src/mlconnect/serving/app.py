"""``mlconnect serve NAME``'s app: serving.api's recommendation API over the engine's Recommender.

The engine (and so torch) is imported here and only here, when the model loads in the server's
worker thread; serving.api itself stays torch-free so that the bundle server can share it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI

from mlconnect.serving.api import Ranker, build_app


def load_engine(experiment_dir: Path, device: str) -> tuple[Any, Ranker]:
    """The best checkpoint, loaded weights-only, and a ``run`` that ranks a batch under inference mode."""
    import torch

    from mlconnect.engine.inference import Recommender

    rec = Recommender.load(experiment_dir, device=device)
    rec.model.eval()  # Recommender.load does this already; serving must never run in train mode

    def run(histories: list[list[str]], k: int, exclude_seen: bool) -> list[list[tuple[str, float]]]:
        with torch.inference_mode():
            return rec.recommend(histories, k=k, exclude_seen=exclude_seen)

    return rec, run


def create_app(experiment_dir: str | Path, *, device: str = "cpu", **kwargs: Any) -> FastAPI:
    """The API for one experiment folder (keyword arguments: serving.api.build_app's limits and key)."""
    root = Path(experiment_dir)
    return build_app(root, loader=lambda: load_engine(root, device), device=device, **kwargs)
