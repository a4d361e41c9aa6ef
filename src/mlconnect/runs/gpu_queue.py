"""The host's run queue and GPU locks: where the queue tickets live, one flock per GPU.

A queued run takes the first free GPU exclusively and runs on it alone (CUDA_VISIBLE_DEVICES); a plain
detached run holds every GPU's lock shared, so queued runs wait for it too.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from mlconnect.runs.gpu import gpu_summary


def queue_dir() -> Path:
    base = os.environ.get("MLCONNECT_QUEUE_DIR")
    if base:
        return Path(base)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "mlconnect" / "queue"


def open_gpu_lock(slot: int | None = None) -> Any:
    qdir = queue_dir()
    qdir.mkdir(parents=True, exist_ok=True)
    name = "gpu.lock" if not slot else f"gpu{slot}.lock"  # GPU 0 keeps the historical name
    return open(qdir / name, "a")  # noqa: SIM115 - held for the life of the run


# --- hook: GPU-aware queue (issue 12). One lock per GPU: a queued run takes the first free GPU and
# runs on it alone (CUDA_VISIBLE_DEVICES), so two single-GPU runs on a two-GPU box run together.
# A plain detached run may use every GPU: it holds all the locks shared.
def gpu_slots() -> list[int]:
    summary = gpu_summary()
    return [int(g["gpu"]) for g in summary["gpus"]] if summary.get("available") else []


def take_free_gpu(slots: list[int]) -> tuple[int | None, Any] | None:
    for slot in slots or [None]:
        f = open_gpu_lock(slot)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return slot, f
        except BlockingIOError:
            f.close()
    return None
# --- end hook
