#!/usr/bin/env python3
"""GPU benchmark: one command, under 8 minutes on one GPU; prints one markdown table.

    python benchmarks/gpu_bench.py                      # on the GPU box (device cuda)
    python benchmarks/gpu_bench.py --device cpu --quick # the same table at tiny sizes, on any machine

Rows:
1. SASRec (configs/baseline.yaml sizes) on a synthetic 10M-interaction, 200k-item catalog with the
   exact chunked CE over the whole catalog: tokens/s and peak GPU memory in fp32, under bf16
   autocast, and with the encoder compiled (``torch.compile``, bf16); then gBCE (256 negatives per position, bf16).
   ``--steps`` timed steps each after warm-up steps (compilation happens in the warm-up), not
   epochs: a step's speed and memory do not change within an epoch.
2. ml-100k with configs/baseline.yaml: time until valid NDCG@10 reaches RecBole 1.2.1's best
   (0.0642; RecBole needed 2,122 s on a 2-core CPU), and the test NDCG@10 of that run.

The data is generated and loaded once; every variant starts from a fresh model and optimizer.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import catalog_bench as cb  # noqa: E402  (the shared step loop and data preparation)

RECBOLE_BEST_VALID = 0.0642
FULL = {"shape": (200_000, 200_000, 10_000_000), "steps": 60, "warmup": 5, "ml100k_epochs": 50}
QUICK = {"shape": (2_000, 5_000, 40_000), "steps": 3, "warmup": 2, "ml100k_epochs": 2}
VARIANTS = [  # label, config overrides, autocast
    ("fp32, CE over the catalog (chunked)", {"enable_amp": False}, False),
    ("bf16 autocast, CE (chunked)", {"enable_amp": True}, True),
    ("bf16 + compiled encoder, CE (chunked)", {"enable_amp": True, "compile": True}, True),
    # One chunk = the whole [targets, catalog] logits at once (plain F.cross_entropy): what a GPU with
    # memory to spare could do instead of the memory-bounded chunks.
    ("fp32, CE in one chunk (loss_chunk_size = catalog)", {"enable_amp": False, "loss_chunk_size": 10**7}, False),
    ("bf16 autocast, CE in one chunk", {"enable_amp": True, "loss_chunk_size": 10**7}, True),
    ("bf16 autocast, gBCE k=256", {"enable_amp": True, "loss_type": "gBCE", "sampled_negatives": 256}, True),
]


def emit(rows: list[str], row: str) -> None:
    """Keep the row for the table and print it now: a run cut short still shows what it measured."""
    rows.append(row)
    print(row, flush=True)


def profile_steps(cfg, model, inputs, targets, device) -> None:
    """Where a step's time goes (torch.profiler, 5 steps): the top kernels by device time, printed."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        cb.train_steps(cfg, model, inputs, targets, device, 5, 1)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60), flush=True)



def catalog_rows(args: argparse.Namespace, sizes: dict, work: Path) -> list[str]:
    import torch

    from mlconnect.engine.config import load_config
    from mlconnect.engine.models import build_model

    device = torch.device(args.device)
    t0 = time.perf_counter()
    cb.make_dataset(work, "synth-catalog", sizes["shape"])
    base = {"data_path": str(work), "dataset": "synth-catalog", "device": args.device}
    cfg = load_config(cb.REPO / "configs" / "baseline.yaml", base)
    ds, _, inputs, targets = cb.prepare(cfg, device)
    prep_s = time.perf_counter() - t0
    rows: list[str] = []
    emit(rows, f"| data: {ds.n_interactions:,} interactions, {ds.n_items - 1:,} items | generated + loaded in "
         f"{prep_s:.0f} s | | |")
    for label, over, autocast in VARIANTS:
        cfg = load_config(cb.REPO / "configs" / "baseline.yaml", {**base, **over})
        torch.manual_seed(0)
        model = build_model(cfg, ds.n_items).to(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        amp = None
        if autocast:
            amp = torch.bfloat16
        if cfg["compile"]:
            # The trainer wraps the module (torch.compile(model)), but training calls
            # model.training_loss, which the wrapper forwards uncompiled. Compile the encoder's
            # method here so the row measures compilation (the loss stays eager).
            model.encode = torch.compile(model.encode)
        try:
            t0 = time.perf_counter()
            tps = cb.train_steps(cfg, model, inputs, targets, device, sizes["steps"], sizes["warmup"], amp=amp)
            wall = time.perf_counter() - t0
        except Exception as exc:  # a variant that cannot run here (no compiler, no bf16) is a row, not a crash
            emit(rows, f"| {label} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} | | |")
            continue
        mem = (f"{torch.cuda.max_memory_allocated() / 2**20:,.0f} MB" if device.type == "cuda" else "– (CPU)")
        emit(rows, f"| {label} | {tps:,.0f} tokens/s | {mem} | {wall:.0f} s incl. warm-up |")
        if args.profile and label == VARIANTS[0][0]:
            profile_steps(cfg, model, inputs, targets, device)
        del model
    return rows


def ml100k_row(args: argparse.Namespace, sizes: dict, work: Path) -> str:
    from mlconnect.engine.config import load_config
    from mlconnect.engine.trainer import train

    if not (Path(args.data_path) / "ml-100k" / "ml-100k.inter").is_file():
        return f"| ml-100k | not found under {args.data_path} (pass --data-path) | | |"
    cfg = load_config(cb.REPO / "configs" / "baseline.yaml", {
        "data_path": args.data_path, "device": args.device, "epochs": sizes["ml100k_epochs"], "seed": 2020,
        "save_checkpoints": False, "metrics": ["NDCG", "Hit"], "topk": [10]})
    r = train(cfg, work / "ml100k-run", force=True)
    hit = next((p for p in r["valid_curve"] if p.get("ndcg@10", 0.0) >= RECBOLE_BEST_VALID), None)
    when = (f"epoch {hit['epoch']}, {hit['elapsed_s']:.1f} s" if hit
            else f"not reached in {r['epochs']} epochs ({r['wall_time_s']:.1f} s)")
    return (f"| ml-100k to valid NDCG@10 >= {RECBOLE_BEST_VALID} | {when} | best valid "
            f"{r['best_valid']['ndcg@10']:.4f}, test {r['test']['ndcg@10']:.4f} | "
            f"{r['seconds_per_epoch']:.2f} s/epoch |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (40k interactions, 3 steps, 2 epochs)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print where the first variant's step time goes")
    ap.add_argument("--data-path", default=cb.default_data_path())
    ap.add_argument("--work", default=None, help="folder for the synthetic data (default: a temp dir)")
    args = ap.parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here — run with --device cpu --quick")
    sizes = dict(QUICK if args.quick else FULL)
    if args.steps:
        sizes["steps"] = args.steps
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        rows = catalog_rows(args, sizes, work)
        emit(rows, ml100k_row(args, sizes, work))
    print(f"\n{name}, torch {torch.__version__}, SASRec hidden 64, 2 layers, 50 positions, 2,048 targets a batch, "
          f"{sizes['steps']} timed steps per variant{' (--quick)' if args.quick else ''}:\n")
    print("| run | throughput / result | peak GPU memory | time |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
