#!/usr/bin/env python3
"""Training benchmark: prints markdown tables for the closing note.

    python benchmarks/train_bench.py [--data-path DIR] [--models SASRec GRU4Rec BERT4Rec] [--threads N]

1. Loading and splitting ml-100k (median of 5).
2. SASRec / GRU4Rec / BERT4Rec on ml-100k with RecBole's protocol (the shipped configs): test
   NDCG@10 and Hit@10, epochs, time to the best epoch, when RecBole's best valid NDCG@10 (0.0642)
   was reached, seconds per epoch, peak RSS. Each run is its own process, so peak RSS is its own.
3. SASRec on 1M synthetic interactions: training throughput (tokens/s) and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECBOLE_RUN = REPO.parent / "shared" / "fixtures" / "recbole" / "sasrec-ml-100k-run.json"
RECBOLE_BEST_VALID = 0.0642  # that file's best valid NDCG@10 (epoch 7, 2,122 s); read from it when present
CONFIGS = {"SASRec": "baseline.yaml", "GRU4Rec": "gru4rec.yaml", "BERT4Rec": "bert4rec.yaml"}


def default_data_path() -> str:
    env = os.environ.get("MLCONNECT_TEST_DATA")
    return env or str(REPO.parent / "shared" / "datasets")


def one_run(args: argparse.Namespace) -> None:
    """Child mode: train one config and print the results JSON on the last line."""
    import resource

    from mlconnect.engine.config import load_config, parse_overrides
    from mlconnect.engine.trainer import train

    cfg = load_config(args.config, parse_overrides(args.set))
    results = train(cfg, Path(args.out), force=True)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(results))


def run_child(config: Path, out: Path, sets: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", "--config", str(config), "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed ({config.name}):\n{proc.stderr[-2000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    results["process_s"] = time.perf_counter() - t0
    return results


def bench_loading(data_path: str) -> str:
    from mlconnect.engine.config import load_config
    from mlconnect.engine.data import load_dataset, split_leave_one_out

    cfg = load_config(None, {"data_path": data_path, "dataset": "ml-100k"})
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        ds = load_dataset(cfg)
        split_leave_one_out(ds, cfg.max_len)
        times.append(time.perf_counter() - t0)
    return (f"| load + split ml-100k | {statistics.median(times):.3f} s (median of 5; "
            f"min {min(times):.3f}, max {max(times):.3f}) | RecBole 1.2.1: 7.3 s |")


def recbole_row() -> str:
    """RecBole 1.2.1's own SASRec run on this machine, from the fixture (not retyped by hand)."""
    if not RECBOLE_RUN.is_file():
        return "| RecBole 1.2.1 SASRec | (fixture not found) | | | | | | | |"
    run = json.loads(RECBOLE_RUN.read_text())
    best, test, epochs = run["best_valid"], run["test_at_best_valid"], run["epochs"]
    per_epoch = statistics.median(e["train_s"] for e in epochs)
    return (f"| RecBole 1.2.1 SASRec (fixture, lr 0.001) | {test['ndcg@10']:.4f} | {test['hit@10']:.4f} | "
            f"{len(epochs)} ({best['epoch']}) | {best['cumulative_s']:.1f} s | epoch {best['epoch']}, "
            f"{best['cumulative_s']:.1f} s | {per_epoch:.0f} | – | – |")


def reached(results: dict, target: float) -> str:
    for point in results.get("valid_curve", []):
        if point.get("ndcg@10", 0.0) >= target:
            return f"epoch {point['epoch']}, {point['elapsed_s']:.1f} s"
    return "not reached"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-path", default=default_data_path())
    ap.add_argument("--models", nargs="+", default=list(CONFIGS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--synthetic-interactions", type=int, default=1_000_000)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[2020],
                    help="Seeds for each model; with several, a mean ± sd row per model follows.")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        one_run(args)
        return
    if not (Path(args.data_path) / "ml-100k" / "ml-100k.inter").is_file():
        raise SystemExit(f"ml-100k not found under {args.data_path}: pass --data-path or set MLCONNECT_TEST_DATA")

    import torch

    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {args.threads}, "
          f"device {args.device}\n")
    print("| step | time | reference |\n|---|---|---|")
    print(bench_loading(args.data_path))
    print()

    common = [f"data_path={args.data_path}", f"num_threads={args.threads}", f"device={args.device}",
              "metrics=[Hit,NDCG,MRR]", "topk=[10]"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for seed in args.seeds:
                label = model if len(args.seeds) == 1 else f"{model} (seed {seed})"
                r = run_child(REPO / "configs" / CONFIGS[model], Path(tmp) / f"{model}-{seed}",
                              [*common, f"seed={seed}"])
                rows.append((label, r))
                print(f"  ran {label}: {r['epochs']} epochs in {r['wall_time_s']:.0f} s", file=sys.stderr)
        print("ml-100k, RecBole protocol (LS valid_and_test, TO, full ranking, history not masked):\n")
        print("| model | test NDCG@10 | test Hit@10 | epochs (best) | time to best epoch | valid NDCG@10 >= 0.0642 "
              "| s/epoch | tokens/s | peak RSS |")
        print("|---|---|---|---|---|---|---|---|---|")
        for model, r in rows:
            print(f"| {model} | {r['test']['ndcg@10']:.4f} | {r['test']['hit@10']:.4f} | {r['epochs']} "
                  f"({r['best_epoch']}) | {r['time_to_best_s']:.1f} s | {reached(r, RECBOLE_BEST_VALID)} | "
                  f"{r['seconds_per_epoch']:.2f} | {r['throughput_tokens_per_s']:,.0f} | {r['peak_rss_mb']:.0f} MB |")
        if len(args.seeds) > 1:
            for model in args.models:
                rs = [r for label, r in rows if label.startswith(f"{model} (")]
                nd = [r["test"]["ndcg@10"] for r in rs]
                hit = [r["test"]["hit@10"] for r in rs]
                print(f"| {model} mean ± sd over {len(rs)} seeds "
                      f"| {statistics.mean(nd):.4f} ± {statistics.stdev(nd):.4f} "
                      f"| {statistics.mean(hit):.4f} ± {statistics.stdev(hit):.4f} | | "
                      f"median {statistics.median(r['time_to_best_s'] for r in rs):.1f} s | | "
                      f"{statistics.median(r['seconds_per_epoch'] for r in rs):.2f} | | |")
        print(recbole_row())
        if not args.skip_synthetic:
            from mlconnect.data.synth import generate

            n = args.synthetic_interactions
            data = Path(tmp) / "synth"
            t0 = time.perf_counter()
            generate(data, "synth1m", n_users=max(1000, n // 50), n_items=max(500, n // 100), n_interactions=n, seed=0)
            gen_s = time.perf_counter() - t0
            r = run_child(REPO / "configs" / "baseline.yaml", Path(tmp) / "synth-run",
                          [f"data_path={data}", "dataset=synth1m", "epochs=1", f"num_threads={args.threads}",
                           f"device={args.device}", "metrics=[Hit,NDCG]", "topk=[10]"])
            print(f"\nSASRec on {r['n_interactions']:,} synthetic interactions ({r['n_users']:,} users, "
                  f"{r['n_items']:,} items; generated in {gen_s:.1f} s):\n")
            print("| data ready | epoch time | training throughput | peak RSS |\n|---|---|---|---|")
            print(f"| {r['data_ready_s']:.2f} s | {r['seconds_per_epoch']:.1f} s | "
                  f"{r['throughput_tokens_per_s']:,.0f} tokens/s | {r['peak_rss_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
