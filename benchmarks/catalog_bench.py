#!/usr/bin/env python3
"""Large-catalog benchmark: peak memory and training throughput against the catalog size.

    python benchmarks/catalog_bench.py [--data-path DIR] [--steps 30] [--threads 2] [--quick]
                                       [--compare-ref REF] [--skip-memory] [--skip-throughput]

1. **Memory** (each row its own process, so peak RSS is its own): configs/baseline.yaml SASRec on a
   synthetic dataset shaped like the issue's real one (287k interactions, 23.7k items): data,
   windows, model, ``--steps`` training steps and one full valid evaluation. ``--compare-ref main``
   runs the same child on that git ref's source (extracted with ``git archive``) for a before row.
2. **Throughput**: the same SASRec (hidden 64, 2 layers, 50 positions, 2,048 targets a batch) on
   ml-100k (1.7k items, full CE) and on a 1M-interaction, 200k-item synthetic catalog with each
   large-catalog loss: tokens/s over ``--steps`` steps after 3 warm-up steps.

Bounded steps, not epochs: a step's memory and speed do not change within an epoch, and a full
epoch of full-catalog CE over 23.7k items takes ~20 min on a busy 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {  # name: (users, item ids, interactions); the catalog is the items that occur
    "real287k": (20_000, 27_000, 287_000),
    "synth1m-200k": (20_000, 370_000, 1_000_000),  # ~197k of the 370k ids occur
}
QUICK_SHAPES = {"real287k": (2_000, 5_000, 30_000), "synth1m-200k": (2_000, 20_000, 40_000)}


def default_data_path() -> str:
    return os.environ.get("MLCONNECT_TEST_DATA") or str(REPO.parent / "shared" / "datasets")


def make_dataset(root: Path, name: str, shape: tuple[int, int, int]) -> None:
    from mlconnect.data.synth import generate

    if not (root / name / f"{name}.inter").is_file():
        generate(root, name, n_users=shape[0], n_items=shape[1], n_interactions=shape[2], seed=0)


def prepare(cfg, device):
    """Data, split and training windows as the trainer builds them."""
    import torch

    from mlconnect.engine.data import load_dataset, split_leave_one_out, training_windows

    ds = load_dataset(cfg)
    split = split_leave_one_out(ds, cfg.max_len)
    inputs, targets = training_windows(split.train, cfg.max_len, cfg["window_stride"])
    return ds, split, torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)


def train_steps(cfg, model, inputs, targets, device, steps: int, warmup: int = 3,
                amp=None, forward_model=None, stats: dict | None = None) -> float:
    """Run ``warmup + steps`` training steps as the trainer does; tokens/s over the timed steps.
    ``stats`` (optional) receives ``cpu_s`` (process CPU seconds of the timed steps) and ``tokens``."""
    from contextlib import nullcontext

    import torch

    from mlconnect.engine.runtime import make_optimizer

    fwd = forward_model or model
    opt = make_optimizer(cfg, model)  # the model: a sparse item table (sparse_item_grad) gets LazyAdamW
    per_batch = max(1, cfg["train_batch_size"] // cfg.max_len)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(inputs), generator=gen)
    model.train()
    tokens, t0, c0 = 0, None, 0.0
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
        lo = (step * per_batch) % max(1, len(inputs) - per_batch)
        idx = order[lo:lo + per_batch].to(device)
        x, y = inputs[idx], targets[idx]
        with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
            loss = fwd.training_loss(x, y, cfg["loss_type"], cfg["sampled_negatives"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= warmup:
            tokens += int((y > 0).sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    if stats is not None:
        stats.update(cpu_s=time.process_time() - c0, tokens=tokens)
    return tokens / (time.perf_counter() - t0)


def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process; prints a JSON line."""
    import torch

    from mlconnect.engine.config import load_config, parse_overrides
    from mlconnect.engine.models import build_model
    from mlconnect.engine.runtime import sparse_rows
    from mlconnect.engine.trainer import evaluate

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(REPO / "configs" / "baseline.yaml", parse_overrides(args.set))
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    ds, split, inputs, targets = prepare(cfg, device)
    data_s = time.perf_counter() - t0
    model = build_model(cfg, ds.n_items, sparse_rows(cfg, ds.n_items, device)).to(device)
    stats: dict = {}
    tps = train_steps(cfg, model, inputs, targets, device, args.steps, stats=stats)
    t0 = time.perf_counter()
    valid = {} if args.no_eval else evaluate(model, split, "valid", cfg, device)
    print(json.dumps({"items": ds.n_items - 1, "interactions": ds.n_interactions, "data_s": data_s,
                      "tokens_per_s": tps, "tokens_per_cpu_s": stats["tokens"] / max(stats["cpu_s"], 1e-9),
                      "sparse_rows": bool(sparse_rows(cfg, ds.n_items, device)),
                      "eval_s": time.perf_counter() - t0, "valid_ndcg10": valid.get("ndcg@10"),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(sets: list[str], args: argparse.Namespace, src: Path | None = None, evaluate: bool = True) -> dict:
    cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps), "--threads", str(args.threads),
           "--device", args.device, *([] if evaluate else ["--no-eval"])]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed ({' '.join(sets)}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def extract_ref(ref: str, into: Path) -> Path:
    """``git archive REF src`` into a temp folder: a before row without touching any checkout."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", ref, "src"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=data, check=True)
    return into / "src"


LOSSES = {  # throughput rows on the 200k catalog: (label, overrides)
    "CE, chunked over the catalog": ["loss_type=CE", "sampled_negatives=0"],
    "CE, 1,024 shared negatives": ["loss_type=CE", "sampled_negatives=1024"],
    "gBCE, 256 negatives/position": ["loss_type=gBCE", "sampled_negatives=256", "gbce_t=0.75"],
    # configs/large-catalog.yaml's batch: the table's optimizer step is paid once per 8,192 targets
    "CE, 1,024 shared negatives, batch 8,192": ["loss_type=CE", "sampled_negatives=1024", "train_batch_size=8192"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-path", default=default_data_path())
    ap.add_argument("--work", default=None, help="where synthetic datasets are written (default: a temp dir)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes and 3 steps: checks the script runs")
    ap.add_argument("--compare-ref", default=None, help="also run the memory child on this git ref's source")
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key in the 200k-catalog throughput rows (e.g. sparse_item_grad=false)")
    ap.add_argument("--eval", action="store_true", help="also time a full valid evaluation in the throughput rows")
    ap.add_argument("--no-eval", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.quick:
        args.steps = 3
    shapes = QUICK_SHAPES if args.quick else SHAPES
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        common = [f"data_path={work}", "epochs=1", f"device={args.device}", "metrics=[NDCG,Hit]", "topk=[10]"]
        print(f"machine: {os.cpu_count()} CPUs, threads {args.threads}, device {args.device}, "
              f"{args.steps} timed steps per row\n")
        if not args.skip_memory:
            make_dataset(work, "real287k", shapes["real287k"])
            rows = []
            if args.compare_ref:
                src = extract_ref(args.compare_ref, Path(tmp))
                rows.append((f"{args.compare_ref} (full logits, full score matrix)",
                             run_child([*common, "dataset=real287k"], args, src)))
            rows.append(("this branch (chunked CE, chunked top-K eval)",
                         run_child([*common, "dataset=real287k"], args)))
            r0 = rows[-1][1]
            print(f"Memory: configs/baseline.yaml SASRec, {r0['interactions']:,} interactions, {r0['items']:,} items "
                  f"(synthetic, shaped like the issue's dataset), {args.steps} steps + one valid evaluation:\n")
            print("| code | peak RSS | tokens/s | valid eval | valid NDCG@10 |\n|---|---|---|---|---|")
            for label, r in rows:
                print(f"| {label} | {r['peak_rss_mb']:,.0f} MB | {r['tokens_per_s']:,.0f} | {r['eval_s']:.1f} s | "
                      f"{r['valid_ndcg10']:.4f} |")
            print()
        if not args.skip_throughput:
            make_dataset(work, "synth1m-200k", shapes["synth1m-200k"])
            ml = run_child([*common[1:], f"data_path={args.data_path}", "dataset=ml-100k"], args, evaluate=args.eval)
            print("Throughput: SASRec, hidden 64, 2 layers, 50 positions, 2,048 targets a batch:\n")
            # Wall tokens/s moves with the machine's load; tokens per CPU-second (all threads) much less.
            print("| dataset | items | loss | item table update | tokens/s | vs ml-100k | tokens per CPU-s | "
                  "vs ml-100k | peak RSS |\n|---|---|---|---|---|---|---|---|---|")

            def row(name: str, label: str, r: dict) -> None:
                upd = "sparse rows (LazyAdamW)" if r["sparse_rows"] else "dense"
                print(f"| {name} | {r['items']:,} | {label} | {upd} | {r['tokens_per_s']:,.0f} | "
                      f"{r['tokens_per_s'] / ml['tokens_per_s']:.0%} | {r['tokens_per_cpu_s']:,.0f} | "
                      f"{r['tokens_per_cpu_s'] / ml['tokens_per_cpu_s']:.0%} | {r['peak_rss_mb']:,.0f} MB |")

            row("ml-100k", "CE over the catalog", ml)
            for label in args.losses:
                r = run_child([*common, "dataset=synth1m-200k", *LOSSES[label], *args.set], args, evaluate=args.eval)
                row(f"synthetic {r['interactions']:,}", label, r)


if __name__ == "__main__":
    main()
