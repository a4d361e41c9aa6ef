"""Helpers for the runs tests: a tiny RecBole dataset, a config, the CLI as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

FAKE_SMI = """#!/bin/sh
echo "0, NVIDIA GeForce RTX 3090, 37, 12, 1024, 24576, 55, 120.50"
"""


def write_tiny_dataset(data_dir: Path, name: str = "tiny", users: int = 50, items: int = 20,
                       per_user: int = 20) -> Path:
    """RecBole atomic ``.inter``: 50 users x 20 interactions over 20 items, seeded."""
    rng = random.Random(7)
    d = data_dir / name
    d.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(users):
        lines += [f"u{u}\ti{rng.randrange(items)}\t{t}" for t in range(per_user)]
    (d / f"{name}.inter").write_text("\n".join(lines) + "\n")
    return data_dir


def write_project(root: Path, data_dir: Path, epochs: int = 2) -> Path:
    """A project folder with configs/tiny.yaml pointing at ``data_dir`` (absolute, as a host path)."""
    (root / "configs").mkdir(parents=True, exist_ok=True)
    cfg = root / "configs" / "tiny.yaml"
    cfg.write_text(f"model: SASRec\ndataset: tiny\ndata_path: {data_dir}\nepochs: {epochs}\n"
                   "hidden_size: 16\ntrain_batch_size: 64\nnum_threads: 1\ndevice: cpu\n"
                   "progress_interval_s: 0.5\n")
    return cfg


def tiny_project(tmp_path: Path, epochs: int = 2) -> Path:
    """``tmp_path/proj`` with configs/tiny.yaml over the tiny dataset in ``tmp_path/data``."""
    root = tmp_path / "proj"
    root.mkdir()
    write_project(root, write_tiny_dataset(tmp_path / "data"), epochs=epochs)
    return root


def put(path: Path, text: str) -> Path:
    """Write ``text`` to ``path``, making its folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cli_env(tmp: Path, extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MLCONNECT_QUEUE_DIR=str(tmp / "queue"),
               MLCONNECT_HEARTBEAT_S="1", MLCONNECT_GPU_INTERVAL_S="0.5", COLUMNS="200",
               PYTHONUNBUFFERED="1")
    env.pop("MLCONNECT_DEBUG", None)
    if extra_path:
        env["PATH"] = f"{extra_path}{os.pathsep}{env['PATH']}"
    return env


def mlc(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """``mlconnect ARGS`` as a real process (``python -m mlconnect``)."""
    cp = subprocess.run([sys.executable, "-m", "mlconnect", *args], cwd=cwd, env=env, text=True,
                        capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and cp.returncode != 0:
        raise AssertionError(f"mlconnect {' '.join(args)} exited {cp.returncode}:\n{cp.stdout}\n{cp.stderr}")
    return cp


def ps_json(cwd: Path, env: dict[str, str], extra: list[str] | None = None) -> dict[str, dict]:
    out = mlc(["ps", "--json", *(extra or [])], cwd, env).stdout
    return {r["name"]: r for r in json.loads(out)}


def wait_for(pred, timeout: float = 90, interval: float = 0.2, what: str = "condition"):
    """``pred()``'s first truthy value; an OSError (a port not open yet) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            v = pred()
            if v:
                return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
