"""Recommendations from a trained experiment: raw ids in, raw ids out, batched.

Everything comes from the experiment folder (config, best checkpoint loaded weights-only, id maps,
user histories), so a pulled experiment serves without the original data files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlconnect.engine.checkpoint import load_checkpoint
from mlconnect.engine.config import load_config
from mlconnect.engine.models import build_model
from mlconnect.errors import ExperimentError
from mlconnect.fileio import read_json
from mlconnect.layout import ExperimentPaths


class Recommender:
    """A loaded model plus its id maps. Build it with :meth:`load`."""

    def __init__(self, paths: ExperimentPaths, model: torch.nn.Module, cfg: Any, vocab: dict[str, Any],
                 histories: list[np.ndarray], items_meta: dict[str, dict[str, Any]], device: torch.device) -> None:
        self.paths, self.model, self.cfg, self.device = paths, model, cfg, device
        self.item_ids: list[str] = vocab["item_ids"]
        self.user_ids: list[str] = vocab["user_ids"]
        self.item_index = {raw: i for i, raw in enumerate(self.item_ids) if i > 0}
        self.user_index = {raw: i for i, raw in enumerate(self.user_ids) if i > 0}
        self.histories = histories
        self.items_meta = items_meta
        self.max_len = cfg.max_len
        self.known_items = set(self.item_index)
        self.known_users = set(self.user_index)
        results = read_json(paths.results, {}) or {}
        meta = read_json(paths.meta, {}) or {}
        self.info = {"experiment": paths.name, "model": cfg["model"], "dataset": cfg["dataset"],
                     "metrics": {"valid": results.get("best_valid"), "test": results.get("test")},
                     "created": meta.get("started"), "n_items": len(self.item_ids) - 1}

    @classmethod
    def load(cls, experiment_dir: str | Path, device: str = "cpu", which: str = "best") -> Recommender:
        paths = ExperimentPaths(Path(experiment_dir))
        if not paths.config.is_file():
            raise ExperimentError(f"no experiment at {paths.root}", "check the name with `mlconnect ls`")
        ck_path = paths.checkpoint(which)
        if not ck_path.is_file() and which == "best":
            ck_path = paths.checkpoint("last")
        cfg = load_config(paths.config)
        dev = torch.device(device)
        ck = load_checkpoint(ck_path, map_location=dev)
        vocab = json.loads(paths.vocab.read_text(encoding="utf-8"))
        model = build_model(cfg, len(vocab["item_ids"]))
        model.load_state_dict(ck["model"])
        model.to(dev).eval()
        with np.load(paths.checkpoints / "histories.npz", allow_pickle=False) as h:
            histories = np.split(h["items"], np.cumsum(h["lengths"])[:-1])
        items_meta = read_json(paths.checkpoints / "items.json", {}) or {}
        return cls(paths, model, cfg, vocab, histories, items_meta, dev)

    def user_history(self, user_id: str) -> list[str]:
        """The user's items in time order (raw ids); KeyError for an unknown user."""
        u = self.user_index[str(user_id)]
        return [self.item_ids[i] for i in self.histories[u]]

    def item_metadata(self, item_id: str) -> dict[str, Any]:
        return dict(self.items_meta.get(str(item_id), {}))

    def unknown_items(self, items: list[str]) -> list[str]:
        return [i for i in items if str(i) not in self.item_index]

    @torch.inference_mode()
    def recommend_ids(self, histories: list[list[int]], k: int = 10,
                      exclude_seen: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Internal ids in; (scores [B, k], item ids [B, k]) out. One forward for the whole batch."""
        x = np.zeros((len(histories), self.max_len), dtype=np.int64)
        for row, h in enumerate(histories):
            tail = h[-self.max_len:]
            x[row, : len(tail)] = tail
        xb = torch.from_numpy(x).to(self.device)
        scores = self.model.full_scores(xb, (xb > 0).sum(1))
        if exclude_seen:
            width = max(1, max(len(h) for h in histories))
            seen = np.zeros((len(histories), width), dtype=np.int64)
            for row, h in enumerate(histories):
                seen[row, : len(h)] = h
            scores.scatter_(1, torch.from_numpy(seen).to(self.device), float("-inf"))
        k = min(k, scores.shape[1] - 1)
        top = torch.topk(scores, k, dim=1)
        return top.values, top.indices

    def recommend(self, histories: list[list[str]], k: int = 10,
                  exclude_seen: bool = True) -> list[list[tuple[str, float]]]:
        """Raw item ids in, ``[(item_id, score), ...]`` per history out (best first)."""
        internal = [[self.item_index[str(i)] for i in h] for h in histories]
        values, indices = self.recommend_ids(internal, k, exclude_seen)
        out = []
        for vals, idx in zip(values.tolist(), indices.tolist()):
            out.append([(self.item_ids[i], float(v)) for v, i in zip(vals, idx) if v != float("-inf")])
        return out
