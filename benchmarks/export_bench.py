"""Exactness and cost of `mlconnect export` on ml-100k for SASRec, GRU4Rec and BERT4Rec.

    python benchmarks/export_bench.py            # train 1 epoch of each (reused when there), export, compare

The export verifies itself on up to 1,000 users; ml-100k has 943, so its own check already covers
every user. This benchmark repeats the comparison independently, through the bundle server's
recommender (ONNX Runtime) against the engine's Recommender, for every user with and without
exclude_seen, and prints whether the top-10 ids are identical and the largest score difference.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"SASRec": "baseline.yaml", "GRU4Rec": "gru4rec.yaml", "BERT4Rec": "bert4rec.yaml"}


def datasets_dir() -> Path:
    d = REPO.parent / "shared" / "datasets"
    if not (d / "ml-100k" / "ml-100k.inter").is_file():
        sys.exit("error: ml-100k not found at ../shared/datasets")
    return d


def main() -> None:
    from mlconnect.deploy.bundle import Bundle
    from mlconnect.deploy.server import BundleRecommender
    from mlconnect.engine.inference import Recommender

    rows = []
    for model, cfg in CONFIGS.items():
        exp = REPO / "experiments" / f"bench-export-{model.lower()}-ml-100k"
        out = exp.parent / f"{exp.name}-bundle"
        if not (exp / "checkpoints" / "best.pt").is_file():
            subprocess.run([sys.executable, "-m", "mlconnect", "train", "--config", str(REPO / "configs" / cfg),
                            "--experiment", exp.name, "--data-path", str(datasets_dir()), "--set", "epochs=1"],
                           check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        t = time.perf_counter()
        if not (out / "card.json").is_file():
            subprocess.run([sys.executable, "-m", "mlconnect", "export", str(exp), "--out", str(out)], check=True,
                           cwd=REPO, stdout=subprocess.DEVNULL)
        took = time.perf_counter() - t
        card = json.loads((out / "card.json").read_text())
        rec, served = Recommender.load(exp), BundleRecommender(Bundle.load(out))
        users = sorted(rec.known_users, key=int)
        same, total, worst = 0, 0, 0.0
        for exclude in (True, False):
            for lo in range(0, len(users), 128):
                hist = [rec.user_history(u) for u in users[lo: lo + 128]]
                for want, got in zip(rec.recommend(hist, 10, exclude), served.recommend(hist, 10, exclude)):
                    total += 1
                    same += [i for i, _ in want] == [i for i, _ in got]
                    worst = max(worst, float(np.max(np.abs(np.array([s for _, s in want]) -
                                                           np.array([s for _, s in got])))))
        rows.append((model, len(users), card["verification"], same, total, worst, took,
                     (out / "model.onnx").stat().st_size / 2**20))
        print(f"{model}: {same}/{total} identical", file=sys.stderr)
    print("\n`mlconnect export` on ml-100k, 1-epoch models (configs/*.yaml), top-10 for every user\n")
    print("| model | users | export's own check (ids identical, max score diff) | predict's path (same check) "
          "| independent: identical lists (with and without exclude_seen) | max score diff | export s "
          "| model.onnx MB |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for model, n, v, same, total, worst, took, mb in rows:
        p = v.get("predict_path", {})
        print(f"| {model} | {n} | {v['users']} users, {v['identical_ids']}, {v['max_abs_score_diff']:.1e} | "
              f"{p.get('users')} users, {p.get('identical_ids')}, {p.get('max_abs_score_diff', float('nan')):.1e} | "
              f"{same}/{total} | {worst:.1e} | {took:.1f} | {mb:.2f} |")


if __name__ == "__main__":
    main()
