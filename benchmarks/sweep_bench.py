#!/usr/bin/env python3
"""Sweep and DDP benchmark: prints markdown tables for the closing note of issue 12.

    python benchmarks/sweep_bench.py [--trials 24] [--max-epochs 50] [--parallel 1]
                                     [--ddp-epochs 3] [--ddp-seeds 3] [--skip-sweep] [--skip-ddp]

1. A sweep of SASRec on ml-100k (configs/baseline.yaml) over learning rate, dropout, n_layers and
   weight decay with median pruning, through the real CLI (`mlconnect sweep start`, detached):
   wall time, best valid NDCG@10 and its test NDCG@10 against baseline.yaml's 5-seed mean (0.0616).
2. The pruned trials trained again without pruning (same configs, plain `mlconnect train`): the
   share of epochs pruning saved.
3. Sweep overhead per trial, start to first epoch, beyond a plain `train`: for each finished trial,
   from the study creating it (Optuna's ``datetime_start``: the worker asks for a trial) to the end
   of its first epoch (the wall time TensorBoard recorded for its validation), less that
   epoch's own training and validation time (from its results), against the same span of a plain
   ``mlconnect train`` launched as a new process (launch to the end of its first epoch, less the
   same). Also the sweep's one-off start: ``sweep start`` to trial 0's first epoch.
4. DDP on CPU: `train --nproc 2` (two gloo processes) against one process, ``--ddp-seeds`` seeds
   each: tokens/s and valid NDCG@10 (mean ± std).

Sizes are flags: a full 24-trial, 50-epoch run takes hours on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASELINE_TEST_NDCG = 0.0616  # configs/baseline.yaml, 5-seed mean test NDCG@10 (commit 1207f60)
SPACE = {"learning_rate": {"float": [3e-4, 5e-3], "log": True},
         "hidden_dropout_prob": {"float": [0.1, 0.6]}, "attn_dropout_prob": {"float": [0.1, 0.6]},
         "n_layers": {"int": [1, 3]}, "weight_decay": {"float": [1e-3, 0.3], "log": True}}


def data_path() -> str:
    return os.environ.get("MLCONNECT_TEST_DATA") or str(REPO.parent / "shared" / "datasets")


def mlc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    cp = subprocess.run([sys.executable, "-m", "mlconnect", *args], cwd=cwd, capture_output=True, text=True,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL)
    if check and cp.returncode != 0:
        raise SystemExit(f"mlconnect {' '.join(args)} failed:\n{cp.stdout[-1500:]}\n{cp.stderr[-1500:]}")
    return cp


def project(tmp: Path, max_epochs: int, threads: int) -> Path:
    root = tmp / "proj"
    (root / "configs").mkdir(parents=True)
    cfg = yaml.safe_load((REPO / "configs" / "baseline.yaml").read_text())
    cfg.update(data_path=data_path(), epochs=max_epochs, num_threads=threads)
    (root / "configs" / "base.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    (root / "mlconnect.toml").write_text("")
    return root


def results(root: Path, name: str) -> dict:
    return json.loads((root / "experiments" / name / "results" / "metrics.json").read_text())


def _ts(started: str) -> float:
    """Optuna's datetime_start (a naive local datetime, as `sweep status --json` prints it) as epoch seconds."""
    return datetime.fromisoformat(started).timestamp()


def first_epoch_end(exp: Path, metric: str) -> float | None:
    """When the run's first epoch ended, its validation included (epoch seconds): the wall time
    TensorBoard recorded for that validation's metric."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(exp / "logs"), size_guidance={"scalars": 0})
    acc.Reload()
    tag = f"valid/{metric}"
    if tag not in acc.Tags().get("scalars", []):
        return None
    return min((e.wall_time for e in acc.Scalars(tag) if e.step == 1), default=None)


def to_first_epoch(root: Path, name: str, start: float) -> float | None:
    """Seconds from ``start`` to the end of the run's first epoch, less that epoch's own training and
    validation time (the trainer's ``elapsed_s`` at its first validation)."""
    res = results(root, name)
    curve = res.get("valid_curve") or [{}]
    end = first_epoch_end(root / "experiments" / name, res["valid_metric"].lower())
    if end is None or curve[0].get("epoch") != 1:
        return None
    return end - start - curve[0]["elapsed_s"]


def sweep(args: argparse.Namespace, root: Path) -> None:
    t0 = time.perf_counter()
    t_start = time.time()
    mlc(["sweep", "start", "--config", "configs/base.yaml", "--space", "space.yaml", "--trials", str(args.trials),
         "--parallel", str(args.parallel), "--name", "bench", "--sampler", "tpe"], root)
    status_file = root / "sweeps" / "bench" / "status.json"
    while (json.loads(status_file.read_text()).get("state") if status_file.exists() else "queued") \
            in ("queued", "running"):
        time.sleep(2)
    wall = time.perf_counter() - t0
    st = json.loads(mlc(["sweep", "status", "bench", "--json"], root).stdout)
    trials = st["trials"]
    done = [t for t in trials if t["state"] == "complete"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    best = st["best"]
    best_res = results(root, best["experiments"][0])
    epochs_sweep = 0
    for t in trials:
        prog = json.loads((root / "experiments" / t["experiments"][0] / "progress.json").read_text())
        epochs_sweep += prog["epoch"]
    # The same pruned configs, trained to their own end (early stopping as usual), no pruning.
    epochs_unpruned = sum(results(root, t["experiments"][0])["epochs"] for t in done)
    for t in pruned:
        name = f"replay-{t['number']:03d}"
        sets = [x for k, v in t["params"].items() for x in ("--set", f"{k}={v}")]
        mlc(["train", "--config", "configs/base.yaml", "--experiment", name, *sets], root)
        epochs_unpruned += results(root, name)["epochs"]
    # Start to first epoch, less the first epoch's own training: what a run spends before (and around)
    # training. Trial: from the study's datetime_start; plain train: from its launch as a new process.
    to_epoch = {t["number"]: to_first_epoch(root, t["experiments"][0], _ts(t["started"])) for t in done}
    launched = time.time()
    mlc(["train", "--config", "configs/base.yaml", "--experiment", "plain", "--set", "epochs=1"], root)
    plain_setup = to_first_epoch(root, "plain", launched)
    trial_setup = [v for v in to_epoch.values() if v is not None]
    first = next((t for t in trials if t["number"] == 0), None)
    sweep_first = to_first_epoch(root, first["experiments"][0], t_start) if first else None
    print(f"\n### Sweep: SASRec on ml-100k, {args.trials} trials, max {args.max_epochs} epochs, "
          f"{args.parallel} worker(s), TPE + median pruning\n")
    print("| measure | value |\n|---|---|")
    print(f"| wall time (start to last trial) | {wall:.0f} s |")
    print(f"| trials complete / pruned | {len(done)} / {len(pruned)} |")
    print(f"| best valid NDCG@10 (trial {best['number']}) | {best['value']:.4f} |")
    print(f"| its test NDCG@10 | {best_res['test']['ndcg@10']:.4f} (baseline.yaml 5-seed mean {BASELINE_TEST_NDCG}) |")
    print(f"| best params | {', '.join(f'{k}={v:.4g}' for k, v in best['params'].items())} |")
    saved = 1 - epochs_sweep / max(epochs_unpruned, 1)
    print(f"| epochs trained with pruning / same trials without | {epochs_sweep} / {epochs_unpruned} "
          f"({saved:.0%} saved) |")
    if plain_setup is not None:
        print(f"| plain `train`: launch to end of epoch 1, less epoch 1's own training + validation | "
              f"{plain_setup:.2f} s |")
    if trial_setup and plain_setup is not None:
        med = statistics.median(trial_setup)
        print(f"| sweep trial: ask to end of epoch 1, less epoch 1's own training + validation "
              f"({len(trial_setup)} trials) | "
              f"median {med:.2f} s, max {max(trial_setup):.2f} s |")
        print(f"| **sweep overhead per trial, start to first epoch, beyond a plain `train`** (target <= 1 s) | "
              f"median {med - plain_setup:+.2f} s, max {max(trial_setup) - plain_setup:+.2f} s |")
    if sweep_first is not None and plain_setup is not None:
        print(f"| once per sweep: `sweep start` to trial 0's end of epoch 1, less its own, beyond a plain "
              f"`train` | {sweep_first - plain_setup:+.2f} s |")


def ddp(args: argparse.Namespace, root: Path) -> None:
    rows = []
    for nproc in (1, 2):
        tps, ndcg = [], []
        for seed in range(2020, 2020 + args.ddp_seeds):
            name = f"ddp{nproc}-{seed}"
            extra = ["--nproc", str(nproc)] if nproc > 1 else []
            mlc(["train", "--config", "configs/base.yaml", "--experiment", name, "--set", f"epochs={args.ddp_epochs}",
                 "--set", f"seed={seed}", "--set", f"num_threads={max(1, args.threads // nproc)}", *extra], root)
            r = results(root, name)
            tps.append(r["throughput_tokens_per_s"])
            ndcg.append(r["best_valid"]["ndcg@10"])
        sd = statistics.stdev(ndcg) if len(ndcg) > 1 else 0.0
        rows.append((nproc, statistics.mean(tps), statistics.mean(ndcg), sd))
    print(f"\n### DDP on CPU (gloo): SASRec on ml-100k, {args.ddp_epochs} epochs, {args.ddp_seeds} seeds each, "
          f"{args.threads} threads in total\n")
    print("| processes | tokens/s (mean) | valid NDCG@10 (mean ± std) |\n|---|---|---|")
    for nproc, tps, mean, sd in rows:
        print(f"| {nproc} | {tps:,.0f} | {mean:.4f} ± {sd:.4f} |")
    print(f"\nspeed-up 2 vs 1 process: {rows[1][1] / rows[0][1]:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--ddp-epochs", type=int, default=3)
    p.add_argument("--ddp-seeds", type=int, default=3)
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-ddp", action="store_true")
    p.add_argument("--keep", action="store_true", help="Keep the temp project (its path is printed).")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    root = project(tmp, args.max_epochs, args.threads)
    print(f"project: {root}  (python {sys.version.split()[0]}, {os.cpu_count()} cpus)")
    try:
        if not args.skip_sweep:
            sweep(args, root)
        if not args.skip_ddp:
            ddp(args, root)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
