#!/usr/bin/env python3
"""A user's event log at production size, end to end: `data import`, then one epoch of `train`.

    python benchmarks/scale_bench.py --rows 50M --items 200k --device cuda --batch 32768   # the GPU box
    python benchmarks/scale_bench.py --rows 300k --items 20k --device cpu                  # any machine

Writes a synthetic event log (Parquet by default, or CSV) with Zipf item popularity and
``rows / --per-user`` users, then runs the real commands a user types, each in its own process,
and reports the wall time and the peak RSS the kernel measured for each (``os.wait4``):

1. ``mlconnect data import events.parquet --out data --name big``
2. ``mlconnect train --dataset big --set epochs=1 ... --json`` (load, split, one epoch, evaluation)

Issue 11's target: 50M interactions with a 200k-item catalog import, load and train one epoch of
SASRec in <= 8 GB peak RSS. Prints a markdown table; nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def count(text: str) -> int:
    """'50M' -> 50_000_000, '200k' -> 200_000."""
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(float(text[:-1] if mult > 1 else text) * mult)


def write_events(path: Path, rows: int, items: int, per_user: int, seed: int = 0) -> None:
    """user_id, item_id, timestamp (Unix seconds): Zipf(1.0) items, users drawn uniformly."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, items + 1)
    users = rng.integers(0, max(1, rows // per_user), rows, dtype=np.int64)
    item_ids = rng.choice(items, size=rows, p=weights / weights.sum()).astype(np.int64)
    table = pa.table({"user_id": users, "item_id": item_ids,
                      "timestamp": 1_600_000_000 + np.arange(rows, dtype=np.int64)})
    del users, item_ids
    if path.suffix == ".csv":
        import pyarrow.csv as pc

        pc.write_csv(table, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, path)


def measured(argv: list[str], cwd: Path, timeout: float) -> tuple[int, float, float, str, str]:
    """Run a command; (exit code, seconds, peak RSS in MB, stdout, stderr tail). Peak RSS: wait4."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "MLCONNECT_HOST": "local"}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.2)
        took = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        rc = os.waitstatus_to_exitcode(status)
        return rc, took, usage.ru_maxrss / 1024, out.read().decode(), err.read().decode()[-2000:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="50M")
    ap.add_argument("--items", default="200k")
    ap.add_argument("--per-user", type=int, default=100, help="mean events per user")
    ap.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="train_batch_size (tokens a step); default: the config's")
    ap.add_argument("--loss", default=None, help="loss_type override, e.g. gBCE (with --set sampled_negatives)")
    ap.add_argument("--set", action="append", default=[], help="more train --set overrides")
    ap.add_argument("--work", default=None, help="folder for the event log and the dataset (default: a temp dir)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per command")
    args = ap.parse_args()
    rows, items = count(args.rows), count(args.items)
    mlc = [sys.executable, "-m", "mlconnect"]
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        events = work / f"events.{args.format}"
        t0 = time.perf_counter()
        if not events.is_file():
            write_events(events, rows, items, args.per_user)
        table.append(f"| write the event log ({events.stat().st_size / 2**20:,.0f} MB {args.format}) | "
                     f"{time.perf_counter() - t0:.0f} s | (this script) | |")
        print(table[-1], flush=True)

        rc, took, rss, _, err = measured([*mlc, "data", "import", str(events), "--out", str(work / "data"),
                                          "--name", "big", "--force"], work, args.timeout)
        table.append(f"| `mlconnect data import` | {took:.0f} s | {rss:,.0f} MB | "
                     f"{'ok' if rc == 0 else 'FAILED: ' + err.strip().splitlines()[-1][:120]} |")
        print(table[-1], flush=True)
        if rc == 0:
            sets = ["epochs=1", "save_checkpoints=false", *args.set]
            if args.batch:
                sets.append(f"train_batch_size={args.batch}")
            if args.loss:
                sets.append(f"loss_type={args.loss}")
            argv = [*mlc, "train", "--config", str(REPO / "configs" / "baseline.yaml"), "--data-path",
                    str(work / "data"), "--dataset", "big", "--device", args.device, "--experiment", "scale",
                    "--force", "--json"]
            for s in sets:
                argv += ["--set", s]
            rc, took, rss, out, err = measured(argv, work, args.timeout)
            try:
                res = json.loads(out)
            except ValueError:
                res = None
            if rc == 0 and res:
                gpu = f", GPU peak {res['peak_gpu_mem_mb']:,.0f} MB" if res.get("peak_gpu_mem_mb") else ""
                detail = (f"{res['n_interactions']:,} interactions, {res['n_items']:,} items, "
                          f"{res['n_users']:,} users; "
                          f"data ready {res['data_ready_s']:.0f} s, epoch {res['seconds_per_epoch']:.0f} s, "
                          f"{res['throughput_tokens_per_s']:,.0f} tokens/s{gpu}; test NDCG@10 "
                          f"{res['test'].get('ndcg@10', float('nan')):.4f}")
            else:
                detail = "FAILED: " + (err.strip().splitlines() or ["no output"])[-1][:160]
            table.append(f"| `mlconnect train` 1 epoch ({args.device}; {', '.join(sets)}) | {took:.0f} s | "
                         f"{rss:,.0f} MB | {detail} |")
            print(table[-1], flush=True)
    print(f"\n{rows:,} events, {items:,}-item catalog, ~{args.per_user} events per user:\n")
    print("| step | wall | peak RSS | result |\n|---|---|---|---|")
    print("\n".join(table))


if __name__ == "__main__":
    main()
