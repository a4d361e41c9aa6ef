#!/usr/bin/env python3
"""The user's commands on a GPU box, end to end: one table of what worked on CUDA and how fast.

    python benchmarks/gpu_smoke.py --data-path /path/to/datasets          # on the GPU box
    python benchmarks/gpu_smoke.py --device cpu --epochs 1                 # the same steps on any machine

Each row is one `mlconnect` command as a user types it, run in a fresh project folder on ml-100k:
`status` (nvidia-smi through the tool), a foreground train, a detached train seen by `ps` and ended
by `stop`, DDP through torchrun on the GPUs there are (NCCL), `export` (ONNX and torch, each verified
against the engine), and `predict` with the engine and with the bundle, whose top-10 lists must agree.
A failing step is a row with its last error line, not a crash: the table is the result.
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


class Steps:
    def __init__(self, cwd: Path, timeout: float) -> None:
        self.cwd, self.timeout, self.rows = cwd, timeout, []
        self.env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "MLCONNECT_HOST": "local", "PYTHONUNBUFFERED": "1"}

    def run(self, label: str, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess | None:
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, "-m", "mlconnect", *args], cwd=self.cwd, env=self.env,
                               capture_output=True, text=True, timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            self.add(label, f"timed out after {timeout or self.timeout:.0f} s", time.perf_counter() - t0)
            return None
        took = time.perf_counter() - t0
        print(f"$ mlconnect {' '.join(args)}  -> rc {p.returncode} in {took:.1f} s", flush=True)
        if p.returncode != 0:
            tail = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()[-1]
            self.add(label, f"FAILED rc {p.returncode}: {tail[:150]}", took)
            print(p.stdout[-3000:], p.stderr[-3000:], sep="\n", flush=True)
            return None
        return p

    def add(self, label: str, result: str, seconds: float) -> None:
        self.rows.append(f"| {label} | {result} | {seconds:.1f} s |")


def as_json(p: subprocess.CompletedProcess | None) -> dict | list | None:
    if p is None:
        return None
    try:
        return json.loads(p.stdout)
    except ValueError:
        return None


def metric(results: dict | None, key: str = "ndcg@10") -> str:
    test = (results or {}).get("test") or {}
    return f"{test[key]:.4f}" if key in test else "?"


def wait_for(steps: Steps, name: str, pred, timeout: float) -> dict | None:
    """Poll `ps --json` until pred(row) holds for the run (or the timeout)."""
    end = time.time() + timeout
    row = None
    while time.time() < end:
        rows = as_json(steps.run("ps", "ps", "--json")) or []
        if isinstance(rows, dict):
            rows = rows.get("runs", [])
        row = next((r for r in rows if r.get("name") == name), None)
        if row and pred(row):
            return row
        time.sleep(3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--data-path", default=str(REPO.parent / "shared" / "datasets"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per command")
    args = ap.parse_args()
    if not (Path(args.data_path) / "ml-100k" / "ml-100k.inter").is_file():
        raise SystemExit(f"error: ml-100k not found under {args.data_path} — pass --data-path")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        proj = Path(tmp)
        shutil.copytree(REPO / "configs", proj / "configs")
        s = Steps(proj, args.timeout)
        base = ["-c", "configs/baseline.yaml", "--data-path", args.data_path, "--device", args.device]

        t0 = time.perf_counter()
        st = as_json(s.run("status", "status", "--json"))
        gpus = (st or {}).get("gpu") or (st or {}).get("gpus")
        s.add("`status` (nvidia-smi through the tool)", json.dumps(gpus)[:200] if st else "no JSON",
              time.perf_counter() - t0)

        t0 = time.perf_counter()
        fg = as_json(s.run("train (foreground)", "train", *base, "-e", "gpu_fg", "--set", f"epochs={args.epochs}",
                           "--json"))
        if fg:
            s.add(f"`train` foreground, {args.epochs} epochs", f"device {fg.get('device')}, "
                  f"{fg.get('seconds_per_epoch', 0):.2f} s/epoch, test NDCG@10 {metric(fg)}", time.perf_counter() - t0)

        t0 = time.perf_counter()
        if s.run("train --detach", "train", *base, "-e", "gpu_det", "--set", "epochs=500", "--detach"):
            row = wait_for(s, "gpu_det", lambda r: (r.get("epoch") or 0) >= 2, 90)
            s.add("`train --detach` then `ps`", json.dumps(row)[:220] if row else "not in ps", time.perf_counter() - t0)
            t0 = time.perf_counter()
            if s.run("stop", "stop", "gpu_det"):
                row = wait_for(s, "gpu_det", lambda r: r.get("state") != "running", 60)
                s.add("`stop` (SIGTERM checkpoint)", f"state {row.get('state') if row else '?'}",
                      time.perf_counter() - t0)

        t0 = time.perf_counter()
        n_gpu = 0
        if args.device.startswith("cuda"):
            import torch

            n_gpu = torch.cuda.device_count()
        ddp = ["--gpus", ",".join(str(i) for i in range(n_gpu))] if n_gpu else ["--nproc", "2"]
        res = as_json(s.run("train DDP", "train", *base, "-e", "gpu_ddp", "--set", "epochs=2", *ddp, "--json"))
        if res:
            s.add(f"`train {' '.join(ddp)}` (torchrun)", f"world_size {res.get('world_size')}, backend "
                  f"{res.get('ddp_backend', res.get('backend', '?'))}, test NDCG@10 {metric(res)}",
                  time.perf_counter() - t0)

        if fg:
            for fmt in ("onnx", "torch"):
                t0 = time.perf_counter()
                out = as_json(s.run(f"export {fmt}", "export", "gpu_fg", "--out", f"bundle_{fmt}", "--format", fmt,
                                    "--json"))
                if out:
                    ver = out.get("verification") or out.get("verified") or out
                    s.add(f"`export --format {fmt}` (verified vs engine)", json.dumps(ver)[:200],
                          time.perf_counter() - t0)
            recs = {}
            for label, extra in (("engine", ["gpu_fg"]), ("bundle (ONNX Runtime)", ["--bundle", "bundle_onnx"])):
                t0 = time.perf_counter()
                out_file = proj / f"recs_{len(recs)}.parquet"
                p = as_json(s.run(f"predict {label}", "predict", *extra, "--out", str(out_file), "--k", "10",
                                  "--json"))
                if p:
                    s.add(f"`predict` with the {label}, k=10", json.dumps(p)[:200], time.perf_counter() - t0)
                    recs[label] = out_file
            if len(recs) == 2:
                import pyarrow.parquet as pq

                order = [("user_id", "ascending"), ("rank", "ascending")]
                a, b = (pq.read_table(f).sort_by(order) for f in recs.values())
                same = a.column("item_id").to_pylist() == b.column("item_id").to_pylist()
                s.add("top-10 engine (this device) == bundle (ONNX, CPU)", f"{'identical' if same else 'DIFFERENT'} "
                      f"for {a.num_rows // 10:,} users", 0.0)

    print(f"\n`mlconnect` on {args.device} ({sys.executable}), ml-100k:\n")
    print("| step | result | time |\n|---|---|---|")
    print("\n".join(s.rows))
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
