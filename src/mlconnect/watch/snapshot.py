"""One reading of an experiment folder, as one JSON-able dict: what ``monitor`` draws a frame from.

This module is deliberately **standard library only and self-contained** (no mlconnect imports):
``monitor --host`` sends its source text to the host as ``python3 -c <source> <exp_dir>``, so one
ssh round trip per refresh returns every file the dashboard needs, and the host needs no
particular mlconnect version for monitoring to work. Locally the same :func:`snapshot` is called
directly. Keep it that way: an import of anything outside the standard library breaks remote
monitoring.

The dict: ``{"experiment", "path", "exists", "read_at", "progress", "status", "results",
"gpu", "log_tail", "problems"}``. A file that is missing reads as ``None``; a file that cannot be
parsed reads as ``None`` *and* adds a line to ``problems`` (the caller decides whether that is an
error or a transient hiccup worth a warning).
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from datetime import datetime, timezone

LOG_TAIL_BYTES = 16384
GPU_TAIL_BYTES = 8192


def _read_json(path: str, problems: list[str]) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        problems.append(f"{os.path.basename(path)}: cannot read ({exc.strerror or exc})")
        return None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        # Writers replace these files atomically, so a bad one is corrupt or cut short by a copy.
        problems.append(f"{os.path.basename(path)}: not valid JSON ({exc.msg} at line {exc.lineno}), "
                        f"{len(text)} bytes — corrupt or half-copied")
        return None
    if not isinstance(doc, dict):
        problems.append(f"{os.path.basename(path)}: expected a JSON object, found {type(doc).__name__}")
        return None
    return doc


def _tail_text(path: str, max_bytes: int) -> str | None:
    """The last ``max_bytes`` of a file (the first, possibly cut, line dropped), None if missing."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return None
    text = data.decode("utf-8", "replace")
    if size > max_bytes and "\n" in text:
        text = text.split("\n", 1)[1]
    return text


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_gpu(path: str, problems: list[str]) -> dict | None:
    """The newest sample of every GPU in ``gpu_usage.csv``: ``{"timestamp", "gpus": [...], "note"}``.

    ``None`` when the file does not exist. A sampler that found no GPU writes one row whose
    ``name`` starts with ``no GPU:`` and an empty ``gpu`` column; that becomes ``note``.
    """
    text = _tail_text(path, GPU_TAIL_BYTES)
    if text is None:
        return None
    header = None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = next(csv.reader([f.readline()]), None)
    except OSError:
        pass
    if not header or "timestamp" not in header:
        problems.append("gpu_usage.csv: no header row")
        return {"timestamp": None, "gpus": [], "note": None}
    rows = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) != len(header) or row[0] == "timestamp":
            continue  # a partly appended last row, or the header itself
        rows.append(dict(zip(header, row)))
    note = None
    gpus = []
    newest = None
    for r in rows:
        if not r.get("gpu", "").strip():
            note = r.get("name") or "no GPU"
    sampled = [r for r in rows if r.get("gpu", "").strip()]
    if sampled:
        newest = sampled[-1]["timestamp"]
        for r in sampled:
            if r["timestamp"] != newest:
                continue
            gpus.append({"gpu": r.get("gpu"), "name": r.get("name"),
                         **{k: _num(r.get(k, "")) for k in header[3:]}})
        note = None  # a real sample beats an old "no GPU" line
    return {"timestamp": newest, "gpus": gpus, "note": note}


def snapshot(exp_dir: str, log_lines: int = 12) -> dict:
    """Read every file the dashboard shows; never raises for a missing or malformed file."""
    problems: list[str] = []
    exp_dir = os.path.abspath(exp_dir)
    j = os.path.join
    log = _tail_text(j(exp_dir, "training.log"), LOG_TAIL_BYTES)
    return {
        "experiment": os.path.basename(exp_dir.rstrip("/")),
        "path": exp_dir,
        "exists": os.path.isdir(exp_dir),
        "has_config": os.path.isfile(j(exp_dir, "config.yaml")),
        "read_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "progress": _read_json(j(exp_dir, "progress.json"), problems),
        "status": _read_json(j(exp_dir, "status.json"), problems),
        "results": _read_json(j(exp_dir, "results", "metrics.json"), problems),
        "gpu": read_gpu(j(exp_dir, "gpu_usage.csv"), problems),
        "log_tail": None if log is None else log.splitlines()[-log_lines:],
        "problems": problems,
    }


def main(argv: list[str]) -> int:
    """``python3 -c <this file> EXP_DIR [LOG_LINES]``: print one snapshot as JSON."""
    lines = int(argv[1]) if len(argv) > 1 else 12
    sys.stdout.write(json.dumps(snapshot(argv[0], lines), default=str))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
