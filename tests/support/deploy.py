"""Tiny trained experiments and their bundles, shared by the deploy tests (built once per session).

The synthetic data comes through this one import, so a move of the generator is a one-line change.
"""

from __future__ import annotations

from pathlib import Path

from mlconnect.data.synth import generate

MODELS = ("SASRec", "GRU4Rec", "BERT4Rec")
N_USERS, N_ITEMS = 400, 300


def dataset(base: Path) -> Path:
    """``base/data/syn``: 400 users, 300 items, 8,000 interactions (same bytes every time)."""
    if not (base / "data" / "syn" / "syn.inter").is_file():
        generate(base / "data", "syn", n_users=N_USERS, n_items=N_ITEMS, n_interactions=8000, seed=7)
    return base / "data"


def trained(base: Path, model: str) -> Path:
    """A one-epoch ``model`` with hidden size 16 on :func:`dataset` (about a second)."""
    exp = base / f"exp-{model.lower()}"
    if (exp / "checkpoints" / "best.pt").is_file():
        return exp
    from mlconnect.engine.config import load_config
    from mlconnect.engine.trainer import train

    shape = {"embedding_size": 16} if model == "GRU4Rec" else {"inner_size": 32, "n_layers": 1}
    cfg = load_config(None, {"model": model, "dataset": "syn", "data_path": str(dataset(base)), "epochs": 1,
                             "hidden_size": 16, "num_threads": 1, "seed": 1, "MAX_ITEM_LIST_LENGTH": 20, **shape})
    train(cfg, exp)
    return exp


def bundle(base: Path, model: str, docker: bool = False) -> Path:
    """The verified ONNX bundle of :func:`trained` (``--docker`` files included when asked)."""
    out = base / f"bundle-{model.lower()}{'-docker' if docker else ''}"
    if not (out / "card.json").is_file():
        from mlconnect.deploy.export import export_bundle

        export_bundle(trained(base, model), out, docker=docker)
    return out
