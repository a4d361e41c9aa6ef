"""Throughput and memory of `mlconnect predict` (top-50 for every user) on a large synthetic catalog.

    python benchmarks/predict_bench.py                  # 100k users, 50k items: generate, train 1 epoch, export
    python benchmarks/predict_bench.py --quick          # 20k users, 10k items
    python benchmarks/predict_bench.py --graph          # also the whole ONNX graph (scatter + TopK in it)
    python benchmarks/predict_bench.py --profile        # where the time goes, stage by stage, then the table

The model is SASRec (hidden 64, 2 layers, 50 positions, RecBole's defaults) with its initial weights
(``--train``: one epoch of sampled softmax): the cost of predict depends on the architecture and the
catalog, not on the weights. Each
measurement is the real command in a fresh process (`mlconnect predict --bundle ... --json`); its
peak RSS comes from the kernel (getrusage of the finished child). Runs once for a 10%-of-users file
and once for all users: a flat peak RSS between the two shows the chunking keeps memory independent
of the number of users. Prints a markdown table; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments"


def ensure(args: argparse.Namespace) -> tuple[Path, Path]:
    size = f"{args.users // 1000}k-{args.items // 1000}k"
    tag = size + ("-trained" if args.train else "")
    data, exp, bundle = BASE / "bench-predict-data", BASE / f"bench-predict-{tag}", BASE / f"bench-predict-{tag}-bundle"
    name = f"synth-{size}"
    if not (data / name / f"{name}.inter").is_file():
        from mlconnect.data.synth import generate  # the one place this benchmark reads the generator from

        t = time.perf_counter()
        generate(data, name, n_users=args.users, n_items=args.items, n_interactions=args.users * args.per_user,
                 seed=0)
        print(f"generated {name} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if not (exp / "checkpoints" / "best.pt").is_file():
        t = time.perf_counter()
        if args.train:
            subprocess.run([sys.executable, "-m", "mlconnect", "train", "--model", "SASRec", "--dataset", name,
                            "--data-path", str(data), "--experiment", exp.name, "--set", "epochs=1",
                            "--set", "MAX_ITEM_LIST_LENGTH=50", "--set", "sampled_negatives=256"],
                           check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        else:
            initialised_experiment(exp, name, data)
        print(f"{'trained' if args.train else 'initialised'} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    if not (bundle / "card.json").is_file():
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mlconnect", "export", str(exp), "--out", str(bundle)], check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL)
        print(f"exported and verified in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return exp, bundle


# Runs the CLI in this process and records its own peak RSS on the way out (ru_maxrss of RUSAGE_SELF).
_WRAP = ("import resource, runpy, sys\n"
         "out = sys.argv.pop(1); sys.argv[0] = 'mlconnect'\n"
         "try:\n    runpy.run_module('mlconnect', run_name='__main__')\n"
         "finally:\n    open(out, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n")


def initialised_experiment(exp: Path, name: str, data: Path) -> None:
    """An experiment folder exactly as training leaves it, with the model's initial weights: what predict
    costs depends on the architecture and the catalog, not on the weights (training 50k items on a
    shared 2-core box would take most of the hour). `--train` trains one epoch instead."""
    import torch

    from mlconnect.engine.checkpoint import save_checkpoint
    from mlconnect.engine.config import load_config
    from mlconnect.engine.data import load_dataset
    from mlconnect.engine.experiment import create_experiment, write_vocab
    from mlconnect.engine.models import build_model

    cfg = load_config(None, {"model": "SASRec", "dataset": name, "data_path": str(data), "MAX_ITEM_LIST_LENGTH": 50})
    ds = load_dataset(cfg)
    paths = create_experiment(cfg, exp)
    paths.checkpoints.mkdir(parents=True, exist_ok=True)
    write_vocab(paths, ds)
    torch.manual_seed(0)
    save_checkpoint(paths.checkpoint("best"), {"model": build_model(cfg, ds.n_items).state_dict()})


def run(argv: list[str], scratch: Path, prelude: str = "") -> dict:
    """One `mlconnect predict` in a fresh process; its JSON summary plus that process's peak RSS."""
    peak_file = scratch / "bench-peak-rss.txt"
    t = time.perf_counter()
    cp = subprocess.run([sys.executable, "-c", prelude + _WRAP, str(peak_file), "predict", *argv, "--json"],
                        capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if cp.returncode != 0:
        sys.exit(cp.stderr.strip().splitlines()[-1])
    res = json.loads(cp.stdout)
    res.update(peak_rss_mb=int(peak_file.read_text()) / 1024, wall_s=wall)
    return res


_GRAPH = ("import mlconnect.deploy.predict as p\n"  # predict through the whole graph (model.onnx: scatter + TopK)
          "from mlconnect.deploy.bundle import Bundle, Scorer\n"
          "def whole(root, threads=None):\n"
          "    b = Bundle.load(root); sc = Scorer(b.root / b.card['model_file'], threads=threads)\n"
          "    return p.Source(b.user_ids, b.item_ids, b.batch, b.lengths, sc.topk, 'onnxruntime graph',\n"
          "                    ordered=b.trim)\n"
          "p.Source.from_bundle = classmethod(lambda cls, root, threads=None: whole(root, threads))\n")


def profile(bundle: Path, k: int, n: int = 8192) -> None:
    """Microseconds per user in each stage of predict's bundle path, on one thread (as each worker runs
    it), and how many candidates per user the integer pass leaves for exact scoring."""
    import numpy as np
    import pyarrow as pa

    from mlconnect.deploy import topk
    from mlconnect.deploy.bundle import Bundle
    from mlconnect.deploy.predict import _Writer

    b = Bundle.load(bundle)
    scorer = topk.EncoderTopK(b.root, len(b.item_ids))
    it, users = scorer.items, np.arange(1, min(n, b.n_users - 1) + 1)
    users = users[np.argsort(b.lengths(users), kind="stable")]  # as predict orders them
    t = dict.fromkeys(("histories", "encoder", "integer pass (ONNX Runtime)", "floor, candidates, exact top-k",
                       "Parquet"), 0.0)
    integer_pass = it.candidates

    def timed(user: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = time.perf_counter()
        out = integer_pass(user, kk)
        t["integer pass (ONNX Runtime)"] += time.perf_counter() - c
        return out

    it.candidates = timed
    writer = _Writer(bundle.parent / ".profile.parquet", bundle.parent / "profile.parquet", False)
    item_ids, user_ids = pa.array(b.item_ids), pa.array(b.user_ids)
    for lo in range(0, len(users), 1024):
        part = users[lo: lo + 1024]
        c = [time.perf_counter()]
        items, _ = b.batch(part)
        c.append(time.perf_counter())
        vecs = scorer.user_vectors(items)
        c.append(time.perf_counter())
        before = t["integer pass (ONNX Runtime)"]
        out_s, out_i = it.topk(vecs, np.zeros((len(part), 1), np.int64), k)
        c.append(time.perf_counter())
        writer.write(user_ids.take(pa.array(part)), out_s, out_i, item_ids)
        c.append(time.perf_counter())
        for key, v in zip(("histories", "encoder", "floor, candidates, exact top-k", "Parquet"), np.diff(c)):
            t[key] += v
        t["floor, candidates, exact top-k"] -= t["integer pass (ONNX Runtime)"] - before
    writer.close()
    (bundle.parent / ".profile.parquet").unlink()
    total = sum(t.values())
    print(f"\nwhere the time goes ({len(users):,} users, top-{k}, one thread; "
          f"{it.counted[1] / max(it.counted[0], 1):.0f} candidates per user scored exactly):\n")
    print("| stage | µs/user | share |\n|---|---:|---:|")
    for key, v in t.items():
        print(f"| {key} | {v / len(users) * 1e6:.1f} | {v / total:.0%} |")
    print(f"| total | {total / len(users) * 1e6:.1f} | |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--items", type=int, default=50_000)
    p.add_argument("--per-user", type=int, default=5, help="mean interactions per user")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="20k users, 10k items")
    p.add_argument("--train", action="store_true", help="train 1 epoch (sampled softmax) instead of initial weights")
    p.add_argument("--engine", action="store_true", help="also predict with the engine (torch) for comparison")
    p.add_argument("--graph", action="store_true", help="also predict through the whole graph (last session's path)")
    p.add_argument("--profile", action="store_true", help="time each stage of the bundle path first")
    args = p.parse_args()
    if args.quick:
        args.users, args.items = 20_000, 10_000
    exp, bundle = ensure(args)
    if args.profile:
        profile(bundle, args.k)
    out = exp / "bench-recs.parquet"
    users_file = exp / "bench-users-10pct.txt"
    vocab = json.loads((bundle / "vocab.json").read_text())
    users = vocab["user_ids"][1:]
    users_file.write_text("".join(f"{u}\n" for u in users[: max(1, len(users) // 10)]))
    threads = ["--threads", str(args.threads)] if args.threads else []
    rows = []
    sources = [("ONNX bundle", ["--bundle", str(bundle)], "")]
    sources += [("ONNX bundle, whole graph", ["--bundle", str(bundle)], _GRAPH)] if args.graph else []
    sources += [("engine (torch)", [str(exp)], "")] if args.engine else []
    for label, src, prelude in sources:
        for which in (str(users_file), "all"):
            r = run([*src, "--out", str(out), "--users", which, "--k", str(args.k), *threads], exp, prelude)
            r["source"] = label
            rows.append(r)
            print(f"{label} {r['users']} users: {r['users_per_s']:.0f} users/s, peak RSS {r['peak_rss_mb']:.0f} MB",
                  file=sys.stderr)
    out.unlink(missing_ok=True)
    print(f"\n`mlconnect predict` — SASRec (hidden 64, 2 layers, 50 positions), {len(users):,} users, "
          f"{len(vocab['item_ids']) - 1:,} items, top-{args.k}, Parquet, {os.cpu_count()} CPUs\n")
    print("| scorer | users | rows | scoring+writing s | users/s | process wall s | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['source']} ({r['device']}) | {r['users']:,} | {r['rows']:,} | {r['seconds']:.1f} | "
              f"{r['users_per_s']:,.0f} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
