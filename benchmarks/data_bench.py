"""Data pipeline at scale: import, first load (cache build), cached load, peak RSS. Prints one markdown table.

    python benchmarks/data_bench.py --sizes 1M,10M          # 50M needs ~10 GB of disk and a long while

For each size a synthetic log (``mlconnect data synth``, 200k items, ~50 events per user) is written
as a plain CSV (header ``user_id,item_id,rating,timestamp``) and as Parquet. Every measurement runs
in its own subprocess and reports that process's wall time and peak RSS (``ru_maxrss``):

* import CSV / import Parquet: ``mlconnect data import`` of the file (with the rating kept);
* first load: ``load_dataset`` + ``split_leave_one_out`` + ``window_index`` (the trainer's windows,
  gathered per batch) with no cache (it builds one);
* cached load: the same again, memory-mapping the cache;
* bytes per interaction: the first load's peak RSS / interactions (the target is <= 60 at 10M), and in
  brackets the same above the RSS the process had before loading (Python, NumPy, pyarrow and torch,
  which ``load_config`` imports: ~255 MB that every training process pays anyway);
* epoch: the real trainer (``Trainer._setup`` + ``_train_epoch``) on the imported data with
  ``--epoch-config`` (default configs/large-catalog.yaml: sampled softmax over 1,024 shared negatives,
  k-core 5, rating >= 3) for at most ``--epoch-steps`` steps: the peak RSS of load + model + optimizer
  + training, and its tokens/s (a step's memory does not change within an epoch).

Times are wall seconds with the process's CPU seconds (user + system, all threads) in brackets: on
a shared machine the wall time moves with the load average, the CPU time much less. Load times are
the whole child process (interpreter start and imports included) and, as "load only", the part
after the imports: ``import torch`` alone is ~1.5 s of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
kind, arg = sys.argv[1], json.loads(sys.argv[2])
if kind == "prepare":
    sys.path.insert(0, arg["bench_dir"])
    from data_bench import prepare
    prepare(**{k: v for k, v in arg.items() if k != "bench_dir"})
    extra = {}
elif kind == "load":
    from mlconnect.engine.config import load_config
    from mlconnect.engine.data import load_dataset, split_leave_one_out, window_index
    cfg = load_config(None, arg)  # imports torch (config validation reads the metric names)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    l0, c0 = time.perf_counter(), time.process_time()
    ds = load_dataset(cfg)
    sp = split_leave_one_out(ds, cfg.max_len)
    w = window_index(sp.train, cfg.max_len)
    extra = {"source": ds.source, "interactions": ds.n_interactions, "windows": len(w), "base_mb": base,
             "load_s": time.perf_counter() - l0, "load_cpu_s": time.process_time() - c0}
elif kind == "epoch":
    from mlconnect.engine.config import load_config
    from mlconnect.engine.data import load_dataset
    from mlconnect.engine.experiment import prepare_experiment
    from mlconnect.engine.progress import Reporter
    from mlconnect.engine.trainer import Trainer
    cfg = load_config(arg.pop("config"), arg.pop("set"))
    if not arg["steps"]:  # only build this config's cache (its own filters: another key)
        print(json.dumps({"source": load_dataset(cfg).source}))
        sys.exit(0)
    paths = prepare_experiment(cfg, arg["exp"], resume=False, force=True)
    tr = Trainer(cfg, paths, resume=False)
    tr._setup()
    tr.steps_per_epoch = min(tr.steps_per_epoch, arg["steps"])
    tr.reporter = Reporter(paths.log, 1)
    tr._train_epoch()
    tr.tb.close()
    extra = {"interactions": tr.ds.n_interactions, "items": tr.ds.n_items - 1, "steps": tr.steps_per_epoch,
             "tokens_per_s": tr.tokens_per_s}
else:
    from mlconnect.data.importer import import_events
    _, card = import_events(**arg)
    extra = {"interactions": card["rows_kept"]}
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"s": time.perf_counter() - t0, "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024,
                  **extra}))
"""


def child(kind: str, arg: dict[str, object]) -> dict[str, float]:
    env_path = str(REPO / "src")
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, json.dumps(arg)], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, check=False)
    if proc.returncode:
        raise SystemExit(f"{kind} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * mult)


def prepare(work: str, n: int, items: int) -> None:
    """Synthetic log -> ``syn<n>.csv`` and ``syn<n>.parquet`` in ``work`` (run in a child process:
    a child inherits its parent's resident size into ``ru_maxrss``, so the parent stays small)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from mlconnect.data.synth import generate

    name = f"syn{n}"
    folder = generate(Path(work) / "synth", name, n_users=max(1, n // 50), n_items=items, n_interactions=n, seed=0,
                      overwrite=True)
    inter = folder / f"{name}.inter"
    table = pacsv.read_csv(inter, parse_options=pacsv.ParseOptions(delimiter="\t"),
                           read_options=pacsv.ReadOptions(skip_rows=1, column_names=["user_id", "item_id", "rating",
                                                                                     "timestamp"]),
                           convert_options=pacsv.ConvertOptions(column_types={
                               "user_id": pa.string(), "item_id": pa.string(), "rating": pa.int8(),
                               "timestamp": pa.int64()}))
    pacsv.write_csv(table, Path(work) / f"{name}.csv", pacsv.WriteOptions(quoting_style="none"))
    pq.write_table(table, Path(work) / f"{name}.parquet")
    shutil.rmtree(folder.parent)


def run(n: int, items: int, work: Path, epoch: dict[str, object] | None = None) -> dict[str, object]:
    t0 = time.perf_counter()
    child("prepare", {"bench_dir": str(Path(__file__).resolve().parent), "work": str(work), "n": n, "items": items})
    csv_path, pq_path = work / f"syn{n}.csv", work / f"syn{n}.parquet"
    gen_s = time.perf_counter() - t0
    data = work / "data"
    imp_csv = child("import", {"path": str(csv_path), "out_dir": str(data), "name": "from_csv",
                               "keep": ["rating"], "overwrite": True})
    imp_pq = child("import", {"path": str(pq_path), "out_dir": str(data), "name": "from_parquet",
                              "keep": ["rating"], "overwrite": True})
    cfg = {"data_path": str(data), "dataset": "from_csv"}
    shutil.rmtree(data / "from_csv" / ".mlconnect-cache", ignore_errors=True)
    first = child("load", cfg)
    cached = [child("load", cfg) for _ in range(3)]  # cheap: the median of three
    cached.sort(key=lambda m: m["s"])
    ep = None
    if epoch is not None:
        ecfg = {"data_path": str(data), "dataset": "from_csv", "device": "cpu", "progress_interval_s": 60,
                **epoch["set"]}
        # the epoch config's cache is built first: the measured run is a training start on an unchanged dataset
        child("epoch", {"config": epoch["config"], "exp": str(work / "epoch-exp"), "steps": 0, "set": ecfg})
        ep = child("epoch", {"config": epoch["config"], "exp": str(work / "epoch-exp"), "steps": epoch["steps"],
                             "set": ecfg})
    for p in (csv_path, pq_path):
        p.unlink()
    shutil.rmtree(data)
    shutil.rmtree(work / "epoch-exp", ignore_errors=True)
    return {"n": n, "gen_s": gen_s, "imp_csv": imp_csv, "imp_pq": imp_pq, "first": first, "cached": cached[1],
            "epoch": ep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1M,10M,50M", help="comma-separated interaction counts (1M, 10M, 50M, ...)")
    ap.add_argument("--items", type=int, default=200_000, help="catalog size")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument("--epoch-config", default=str(REPO / "configs" / "large-catalog.yaml"),
                    help="config of the training-epoch column")
    ap.add_argument("--epoch-steps", type=int, default=30, help="steps of the training epoch (0: skip it)")
    ap.add_argument("--epoch-set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the epoch config (repeatable)")
    args = ap.parse_args()
    from mlconnect.engine.config import parse_overrides

    epoch = ({"config": args.epoch_config, "steps": args.epoch_steps, "set": parse_overrides(args.epoch_set)}
             if args.epoch_steps else None)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="data-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for size in args.sizes.split(","):
            r = run(parse_size(size), args.items, work, epoch)
            rows.append(r)
            print(f"# {size}: {json.dumps(r)}", file=sys.stderr, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("| interactions | items | import CSV | import Parquet | first load (build cache) | cached load "
          "| cached load, load only | peak RSS first load | bytes / interaction (above imports) "
          "| peak RSS cached load | peak RSS import CSV | epoch peak RSS | epoch tokens/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def t(m: dict[str, float]) -> str:
        return f"{m['s']:.1f} s ({m['cpu_s']:.1f})"

    for r in rows:
        n, f, c, e = r["n"], r["first"], r["cached"], r["epoch"]
        ep = (f"{e['rss_mb']:,.0f} MB ({e['steps']} steps) | {e['tokens_per_s']:,.0f}" if e
              else "not measured | not measured")
        print(f"| {n:,} | {args.items:,} | {t(r['imp_csv'])} | {t(r['imp_pq'])} | {t(f)} | {t(c)} "
              f"| {c['load_s']:.2f} s ({c['load_cpu_s']:.2f}) "
              f"| {f['rss_mb']:,.0f} MB | {f['rss_mb'] * 2**20 / n:.0f} "
              f"({(f['rss_mb'] - f['base_mb']) * 2**20 / n:.0f}) "
              f"| {c['rss_mb']:,.0f} MB "
              f"| {r['imp_csv']['rss_mb']:,.0f} MB | {ep} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (this machine has {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
