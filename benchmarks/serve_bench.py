"""Latency and throughput of `mlconnect serve` for the ml-100k SASRec, on loopback.

    python benchmarks/serve_bench.py                      # train (or reuse) the model, measure, print
    python benchmarks/serve_bench.py --compare-batching   # also run with micro-batching off
    python benchmarks/serve_bench.py --bundle             # the torch server next to the ONNX bundle server

The server is the real command (`python -m mlconnect serve ... --host local`) in its own process;
the load comes from another process: a raw asyncio HTTP/1.1 client with one keep-alive connection
per concurrent user, so the client costs little of the two cores. Each level runs for a bounded
time and request count after a short warm-up; p50/p99 are per-request wall times seen by the client.
Prints a markdown table. Nothing here asserts: the numbers go into the report as measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EXP = REPO / "experiments" / "bench-serve-sasrec-ml-100k"


def datasets_dir() -> Path:
    env = os.environ.get("MLCONNECT_TEST_DATA")
    for d in ([Path(env)] if env else []) + [REPO.parent / "shared" / "datasets"]:
        if (d / "ml-100k" / "ml-100k.inter").is_file():
            return d
    sys.exit("error: ml-100k not found — set MLCONNECT_TEST_DATA to the folder holding ml-100k/")


def ensure_experiment(exp: Path, epochs: int) -> None:
    """Train the baseline SASRec (full size: the latency depends on the architecture, not the epochs)."""
    if (exp / "checkpoints" / "best.pt").is_file():
        print(f"reusing {exp}", file=sys.stderr)
        return
    print(f"training {exp} ({epochs} epochs)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "mlconnect", "train", "--config", str(REPO / "configs" / "baseline.yaml"),
                    "--experiment", exp.name, "--data-path", str(datasets_dir()), "--set", f"epochs={epochs}"],
                   check=True, cwd=exp.parent.parent, stdout=subprocess.DEVNULL)  # exp: <cwd>/experiments/<name>


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def start_server(exp: Path, port: int, extra: list[str], threads: int | None,
                 argv: list[str] | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    argv = argv or [sys.executable, "-m", "mlconnect", "serve", str(exp), "--host", "local"]
    proc = subprocess.Popen([*argv, "--port", str(port), *extra], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"error: the server exited with code {proc.returncode} — run `mlconnect serve {exp}` to see why")
        try:
            if get_json(f"http://127.0.0.1:{port}/health")["status"] == "ok":
                return proc
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    sys.exit("error: the server did not become healthy in 120 s — run it by hand to see why")


# -- the load generator (runs in its own process) -------------------------------------------------

async def _worker(port: int, bodies: list[bytes], until: float, warm_until: float, budget: list[int],
                  lat: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    heads = [b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
             b"Content-Length: %d\r\n\r\n" % len(b) + b for b in bodies]
    i = random.randrange(len(heads))
    try:
        while time.perf_counter() < until and budget[0] > 0:
            t0 = time.perf_counter()
            writer.write(heads[i % len(heads)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            t1 = time.perf_counter()
            if t0 >= warm_until:
                budget[0] -= 1
                lat.append(t1 - t0)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors[0] += 1
    finally:
        writer.close()


async def _drive(port: int, bodies: list[bytes], concurrency: int, duration: float, max_requests: int,
                 warmup: float) -> dict[str, Any]:
    lat: list[float] = []
    errors, budget = [0], [max_requests]
    start = time.perf_counter()
    warm_until = start + warmup
    until = warm_until + duration
    await asyncio.gather(*[_worker(port, bodies, until, warm_until, budget, lat, errors)
                           for _ in range(concurrency)])
    elapsed = time.perf_counter() - max(warm_until, start)
    lat.sort()
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: float("nan"))
    return {"concurrency": concurrency, "requests": len(lat), "errors": errors[0], "p50_ms": pick(0.50),
            "p99_ms": pick(0.99), "rps": len(lat) / elapsed}


def loadgen_main(args: argparse.Namespace) -> None:
    bodies = [json.dumps(b).encode() for b in json.loads(Path(args.bodies).read_text())]
    out = asyncio.run(_drive(args.port, bodies, args.concurrency, args.duration, args.max_requests, args.warmup))
    print(json.dumps(out))


def run_level(port: int, bodies_file: Path, concurrency: int, args: argparse.Namespace) -> dict[str, Any]:
    before = get_json(f"http://127.0.0.1:{port}/model")
    cp = subprocess.run([sys.executable, __file__, "--loadgen", "--port", str(port), "--bodies", str(bodies_file),
                         "--concurrency", str(concurrency), "--duration", str(args.duration),
                         "--max-requests", str(args.max_requests), "--warmup", str(args.warmup)],
                        capture_output=True, text=True, check=True, timeout=args.duration + 120)
    res = json.loads(cp.stdout)
    after = get_json(f"http://127.0.0.1:{port}/model")
    batches = after["batches"] - before["batches"]
    res["mean_batch"] = (after["sequences"] - before["sequences"]) / batches if batches else float("nan")
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", type=Path, default=DEFAULT_EXP)
    p.add_argument("--epochs", type=int, default=2, help="when training a fresh experiment")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per level")
    p.add_argument("--max-requests", type=int, default=20000, help="per level")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds per level not measured")
    p.add_argument("--mode", choices=["user", "items"], default="user",
                   help="user: {user_id}; items: a 50-item sequence in the body")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the server")
    p.add_argument("--server-args", default="", help="extra `mlconnect serve` flags, e.g. '--batch-wait-ms 1'")
    p.add_argument("--compare-batching", action="store_true", help="also run with --max-batch 1")
    p.add_argument("--bundle", action="store_true",
                   help="also export the model and serve it with the ONNX bundle server (mlconnect.deploy)")
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--bodies", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loadgen:
        args.concurrency = int(args.concurrency)
        loadgen_main(args)
        return

    exp = args.experiment.resolve()
    ensure_experiment(exp, args.epochs)
    vocab = json.loads((exp / "checkpoints" / "vocab.json").read_text())
    rng = random.Random(0)
    if args.mode == "user":
        bodies = [{"user_id": u, "k": 10} for u in vocab["user_ids"][1:]]
    else:
        items = vocab["item_ids"][1:]
        bodies = [{"items": rng.sample(items, 50), "k": 10} for _ in range(500)]
    rng.shuffle(bodies)
    bodies_file = exp / "bench-bodies.json"
    bodies_file.write_text(json.dumps(bodies))

    configs: list[tuple[str, list[str], list[str] | None]] = [("micro-batching", args.server_args.split(), None)]
    if args.compare_batching:
        configs.append(("one forward per request", [*args.server_args.split(), "--max-batch", "1"], None))
    if args.bundle:
        configs[0] = ("torch (serve NAME)", configs[0][1], None)
        bundle = ensure_bundle(exp)
        configs.append(("ONNX bundle (serve --bundle)", [], [sys.executable, "-m", "mlconnect.deploy.server",
                                                             "--bundle", str(bundle)]))
    levels = [int(c) for c in args.concurrency.split(",")]
    rows, memory = [], {}
    for label, extra, argv in configs:
        port = free_port()
        server = start_server(exp, port, extra, args.threads, argv)
        try:
            memory[label] = rss_mb(server.pid)
            for c in levels:
                r = run_level(port, bodies_file, c, args)
                r["server"] = label
                rows.append(r)
                print(f"{label} c={c}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.2f} ms", file=sys.stderr)
            memory[label] = {"idle": memory[label]["rss"], **rss_mb(server.pid)}
        finally:
            server.terminate()
            server.wait(30)

    info = get_info(exp)
    print(f"\n`mlconnect serve` — {info}, POST /recommend ({args.mode} mode, k=10), "
          f"{os.cpu_count()} CPUs, {args.duration:g} s per level\n")
    print("| server | concurrency | requests | errors | p50 ms | p99 ms | req/s | mean batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['errors']} | {r['p50_ms']:.2f} | "
              f"{r['p99_ms']:.2f} | {r['rps']:.0f} | {r['mean_batch']:.1f} |")
    if args.bundle:
        sizes = install_sizes_mb()
        print("\n| server | RSS when ready MB | peak RSS MB | installed packages MB |")
        print("|---|---:|---:|---:|")
        for (label, mem), size in zip(memory.items(), sizes):
            print(f"| {label} | {mem['idle']:.0f} | {mem['peak']:.0f} | {size:.0f} |")


def ensure_bundle(exp: Path) -> Path:
    """`mlconnect export` of the same experiment (reused when there)."""
    out = exp.parent / f"{exp.name}-bundle"
    if not (out / "card.json").is_file():
        subprocess.run([sys.executable, "-m", "mlconnect", "export", str(exp), "--out", str(out)], check=True,
                       cwd=REPO, stdout=subprocess.DEVNULL)
    return out


def rss_mb(pid: int) -> dict[str, float]:
    fields = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in ln)
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak": int(fields["VmHWM"].split()[0]) / 1024}


def install_sizes_mb() -> tuple[float, float]:
    """Disk taken by what each server needs installed (the packages and everything they require), from
    this environment's package records: mlconnect[serve] for the torch server, the bundle image's
    requirements.txt (mlconnect.deploy.docker) for the bundle server. The Python interpreter is not counted."""
    from importlib.metadata import distribution

    from mlconnect.deploy.docker import SERVER_PACKAGES, pinned_closure

    def size(names: dict[str, str]) -> float:
        total = 0
        for name in names:
            for f in distribution(name).files or []:
                path = Path(f.locate())
                total += path.stat().st_size if path.is_file() else 0
        return total / 2**20

    torch_side = ("torch", "numpy", "pyyaml", "typer", "rich", "tensorboard", "watchfiles", "fastapi", "uvicorn")
    return size(pinned_closure(torch_side)), size(pinned_closure(SERVER_PACKAGES))


def get_info(exp: Path) -> str:
    cfg = (exp / "config.yaml").read_text()
    keys = {k: v.strip() for k, _, v in (ln.partition(":") for ln in cfg.splitlines())
            if k in ("model", "dataset", "hidden_size", "n_layers", "MAX_ITEM_LIST_LENGTH")}
    return ", ".join(f"{k} {v}" for k, v in keys.items())


if __name__ == "__main__":
    main()
