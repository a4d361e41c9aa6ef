"""GPU sampling: ``nvidia-smi --query-gpu`` into ``gpu_usage.csv``; "no GPU" is a state, not an error.

Replaces the manual ``nvidia-smi dmon > gpu_usage.log &`` (an orphan process nobody stops, in a
format nothing reads). The run supervisor calls :meth:`GpuSampler.sample` every few seconds, so
sampling lives and dies with the run. ``mlconnect status`` calls :func:`gpu_summary`.

nvidia-smi is looked up on PATH and then in ``/usr/lib/wsl/lib``, where WSL2 puts it without
adding it to PATH for non-login shells (the ones ssh gives us).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mlconnect.expstate import now_iso

WSL_LIB = "/usr/lib/wsl/lib"
QUERY_FIELDS = ("index", "name", "utilization.gpu", "utilization.memory", "memory.used",
                "memory.total", "temperature.gpu", "power.draw")
CSV_COLUMNS = ("timestamp", "gpu", "name", "utilization_gpu_pct", "utilization_mem_pct",
               "memory_used_mib", "memory_total_mib", "temperature_c", "power_w")


class GpuUnavailable(Exception):
    """No usable GPU: the reason is recorded, nothing fails."""


@dataclass
class GpuSample:
    gpu: int
    name: str
    utilization_gpu_pct: float | None
    utilization_mem_pct: float | None
    memory_used_mib: float | None
    memory_total_mib: float | None
    temperature_c: float | None
    power_w: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def nvidia_smi_path() -> str | None:
    """PATH first, then the WSL2 driver folder (not on PATH in a non-interactive ssh session)."""
    found = shutil.which("nvidia-smi")
    if found:
        return found
    wsl = os.path.join(WSL_LIB, "nvidia-smi")
    return wsl if os.access(wsl, os.X_OK) else None


def _num(text: str) -> float | None:
    # nvidia-smi prints "[N/A]" or "[Not Supported]" for fields a board does not report.
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        return None


def parse_query_output(text: str) -> list[GpuSample]:
    """Parse ``--format=csv,noheader,nounits`` output of :data:`QUERY_FIELDS`."""
    samples = []
    for row in csv.reader(io.StringIO(text)):
        if not row or not row[0].strip():
            continue
        if len(row) < len(QUERY_FIELDS):
            raise GpuUnavailable(f"unexpected nvidia-smi output: {','.join(row)!r}")
        idx = _num(row[0])
        samples.append(GpuSample(
            gpu=int(idx) if idx is not None else len(samples), name=row[1].strip(),
            utilization_gpu_pct=_num(row[2]), utilization_mem_pct=_num(row[3]),
            memory_used_mib=_num(row[4]), memory_total_mib=_num(row[5]),
            temperature_c=_num(row[6]), power_w=_num(row[7])))
    return samples


def query_gpus(timeout: float = 10.0) -> list[GpuSample]:
    """One reading of every GPU; :class:`GpuUnavailable` with the reason when there is none."""
    exe = nvidia_smi_path()
    if exe is None:
        raise GpuUnavailable(f"nvidia-smi not found (looked on PATH and in {WSL_LIB})")
    argv = [exe, f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv,noheader,nounits"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise GpuUnavailable(f"nvidia-smi did not answer within {timeout:.0f}s") from exc
    except OSError as exc:
        raise GpuUnavailable(f"nvidia-smi could not run: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise GpuUnavailable(f"nvidia-smi failed (exit {proc.returncode}): {tail[0]}")
    samples = parse_query_output(proc.stdout)
    if not samples:
        raise GpuUnavailable("nvidia-smi lists no GPU")
    return samples


def gpu_summary() -> dict:
    """For ``mlconnect status``: ``{"available": bool, "gpus": [...], "reason": str | None}``."""
    try:
        return {"available": True, "gpus": [s.to_dict() for s in query_gpus()], "reason": None}
    except GpuUnavailable as exc:
        return {"available": False, "gpus": [], "reason": str(exc)}


class GpuSampler:
    """Appends one CSV row per GPU per :meth:`sample`; records "no GPU" once and then stays quiet."""

    def __init__(self, csv_path: str | os.PathLike[str], interval_s: float = 5.0) -> None:
        self.path = Path(csv_path)
        self.interval_s = interval_s
        self.unavailable: str | None = None
        self._next = 0.0

    def due(self) -> bool:
        return self.unavailable is None and time.monotonic() >= self._next

    def sample(self) -> list[GpuSample]:
        """Take one reading now (the supervisor calls it when :meth:`due`)."""
        self._next = time.monotonic() + self.interval_s
        ts = now_iso()
        try:
            samples = query_gpus(timeout=max(2.0, self.interval_s))
        except GpuUnavailable as exc:
            self.unavailable = str(exc)
            # One row saying why, so the file itself tells the story (and pandas still reads it).
            self._append([[ts, "", f"no GPU: {exc}", "", "", "", "", "", ""]])
            return []
        self._append([[ts, s.gpu, s.name, *(_fmt(v) for v in (
            s.utilization_gpu_pct, s.utilization_mem_pct, s.memory_used_mib, s.memory_total_mib,
            s.temperature_c, s.power_w))] for s in samples])
        return samples

    def _append(self, rows: list[list]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Appends of a few hundred bytes to an O_APPEND file land whole; readers see full rows.
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        if new:
            w.writerow(CSV_COLUMNS)
        w.writerows(rows)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(buf.getvalue())


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else f"{v:.1f}"


def last_utilization(csv_path: str | os.PathLike[str]) -> float | None:
    """Mean GPU utilisation of the newest timestamp in ``gpu_usage.csv`` (None: no file / no GPU)."""
    try:
        with open(csv_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return None
    rows = [r for r in csv.reader(tail[1:] if len(tail) > 1 else tail) if len(r) == len(CSV_COLUMNS)]
    rows = [r for r in rows if r[0] != "timestamp"]
    if not rows:
        return None
    newest = rows[-1][0]
    vals = [_num(r[3]) for r in rows if r[0] == newest]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None
