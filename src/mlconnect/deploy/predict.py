"""``mlconnect predict``: the top-k for every user (or a list of users), written as a table.

Users go through in chunks of a fixed size (1,024 for an ONNX bundle, whose scorer holds only a
cache-sized block of scores at a time, topk.py; else sized so one chunk's score matrix stays near
64 MB), a few chunks in flight at most: memory is flat in users (benchmarks/predict_bench.py measures
it). An ONNX bundle scores one chunk per core at a time, each on one thread, while the main thread
writes the finished ones in order. Rows are buffered into Parquet row groups of about half a million
rows (or CSV rows) in a hidden temp file next to the output, which is renamed over the final name only
once complete: a killed job leaves the old file (or none), never half of one.

Long format: ``user_id, rank, item_id, score`` (rank 1 is best); ``wide``: one row per user with
``item_ids`` and ``scores`` lists (JSON arrays in a CSV's cells). A user's rows are contiguous; users
come in order of history length where the scorer takes any length (shorter padding, see
bundle.pad_batch), else as asked.
The scorer is an ONNX bundle's encoder and candidate graphs under ONNX Runtime with numpy's exact
top-k (topk.EncoderTopK; the whole graph for bundles made before those files), a torch bundle's
program, or, for an experiment, the engine itself (on the GPU when there is one).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from mlconnect.deploy.bundle import ITEM_CANDIDATES_MODEL, Bundle, Scorer, pad_batch
from mlconnect.deploy.program import TorchProgram
from mlconnect.deploy.topk import EncoderTopK
from mlconnect.errors import UsageError
from mlconnect.fileio import fsync_dir

TopK = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]
Batch = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # internal users -> pad_batch's (items, seen)
Lengths = Callable[[np.ndarray], np.ndarray]                   # internal users -> history lengths
SCORE_BUDGET = 1 << 24  # floats in one chunk's [users, items] score matrix (64 MB)
ROW_GROUP_ROWS = 1 << 19  # rows per Parquet row group: fewer, larger groups write ~2x faster, read better


class Source:
    """Users, histories and a top-k function: from a bundle (ONNX Runtime) or an experiment (engine)."""

    def __init__(self, user_ids: list[str], item_ids: list[str], batch: Batch, lengths: Lengths, topk: TopK,
                 device: str, ordered: bool = False, chunk: int | None = None, workers: int = 1) -> None:
        self.user_ids, self.item_ids, self.batch, self.lengths = user_ids, item_ids, batch, lengths
        self.topk, self.device = topk, device
        self.ordered = ordered  # the scorer takes any history length: users go in order of length (less padding)
        self.chunk = chunk  # users per topk call; None: sized by SCORE_BUDGET (the scorer holds [B, n_items])
        self.workers = workers  # chunks scored at once, on threads (topk must be thread-safe when > 1)

    @classmethod
    def from_bundle(cls, root: str | os.PathLike[str], threads: int | None = None) -> Source:
        b = Bundle.load(root)
        if b.card["format"] == "torch":
            scorer: Any = TorchProgram(b.root / b.card["model_file"])
            runtime = "torch.export"
        else:
            # Bundles from before item_candidates.onnx have only the whole graph (scores for every item, TopK).
            newer = ITEM_CANDIDATES_MODEL in b.card["files"]
            scorer = _whole_graph_on_gpu(b, threads) if newer else Scorer(b.root / b.card["model_file"],
                                                                           threads=threads)
            if scorer is None:  # the CPU: encoder + candidate graphs, numpy selection (topk.py), a chunk per core
                workers, items = threads or cpu_count(), EncoderTopK(b.root, len(b.item_ids))
                return cls(b.user_ids, b.item_ids, b.batch, b.lengths, items.topk,
                           f"onnxruntime+numpy {items.device} x{workers}", ordered=b.trim, chunk=1024,
                           workers=workers)
            runtime = "onnxruntime"
        return cls(b.user_ids, b.item_ids, b.batch, b.lengths, scorer.topk, f"{runtime} {scorer.device}",
                   ordered=b.trim)

    @classmethod
    def from_experiment(cls, experiment_dir: str | os.PathLike[str]) -> Source:
        import torch

        from mlconnect.engine.inference import Recommender

        device = "cuda" if torch.cuda.is_available() else "cpu"
        rec = Recommender.load(experiment_dir, device=device)
        hist = rec.histories

        def topk(items: np.ndarray, seen: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            with torch.inference_mode():
                xb = torch.from_numpy(items).to(rec.device)
                scores = rec.model.full_scores(xb, (xb > 0).sum(1))
                scores.scatter_(1, torch.from_numpy(seen).to(rec.device), float("-inf"))
                top = torch.topk(scores, k, dim=1)
                return top.values.float().cpu().numpy(), top.indices.cpu().numpy()

        # trim: right padding past the longest history in a chunk changes no model's answer (export checks
        # the same for the traced graphs); it cut predict's encoder cost ~8x on 5-item histories.
        slot = rec.model.length_slot
        return cls(rec.user_ids, rec.item_ids,
                   lambda us: pad_batch([hist[u] for u in us], rec.max_len, trim=True, slot=slot),
                   lambda us: np.array([len(hist[u]) for u in us], dtype=np.int64), topk, f"torch {device}",
                   ordered=True)


def _whole_graph_on_gpu(b: Bundle, threads: int | None) -> Scorer | None:
    """The whole graph (scores for every item, TopK) on CUDA when this onnxruntime has it: a GPU scores
    every item faster than the CPU's integer pass prunes them. None on a CPU-only onnxruntime, or when CUDA
    fails to load (Scorer then falls back to the CPU, where topk.py's path is the faster one)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    scorer = Scorer(b.root / b.card["model_file"], threads=threads)
    return scorer if scorer.device == "cuda" else None


def read_users(spec: str, source: Source) -> np.ndarray:
    """Internal user ids, each once, in the order first listed: ``all``, or a file with one raw user id per
    line (a ``user_id`` header is allowed; an id with a comma may be quoted CSV-style), or a CSV file with a
    ``user_id`` column. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is ignored."""
    if spec == "all":
        return np.arange(1, len(source.user_ids), dtype=np.int64)
    path = Path(spec)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--users {spec}: cannot read it ({exc})",
                         "give a UTF-8 file with one user id per line, or all") from None
    index = {raw: i for i, raw in enumerate(source.user_ids) if i > 0}
    header = [h.strip() for h in next(csv.reader(lines[:1]), [])]
    column = header.index("user_id") if "user_id" in header else None
    out, unknown = [], []
    for n, line in enumerate(lines, 1):
        if (n == 1 and column is not None) or not line.strip():
            continue
        raw = _listed_user(line, column, index)
        if raw in index:
            out.append(index[raw])
        else:
            unknown.append(f"{raw!r} (line {n})")
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UsageError(f"{path}: unknown user ids {shown}", "list only users of the model's training data")
    if not out:
        raise UsageError(f"{path} lists no users", "one raw user id per line, or --users all")
    ids = np.asarray(out, dtype=np.int64)
    _, first = np.unique(ids, return_index=True)  # a user listed twice gets one set of rows
    return ids[np.sort(first)]


def _listed_user(line: str, column: int | None, index: dict[str, int]) -> str:
    """The raw id on one line: the ``user_id`` field of a CSV row, else the line as written, without its
    surrounding spaces, or unquoted (the first one that is a known user; else the line, for the error)."""
    fields = next(csv.reader([line]), [""])
    if column is not None:
        return fields[column].strip() if column < len(fields) else ""
    for raw in (line, line.strip(), fields[0].strip() if len(fields) == 1 else None):
        if raw is not None and raw in index:
            return raw
    return line.strip()


def cpu_count() -> int:
    """The cores this process may use (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def chunks(users: np.ndarray, n_items: int, size: int | None = None) -> Iterator[np.ndarray]:
    size = size or int(np.clip(SCORE_BUDGET // max(n_items, 1), 64, 8192))
    for lo in range(0, len(users), size):
        yield users[lo: lo + size]


Scored = tuple[np.ndarray, np.ndarray, np.ndarray]  # users [B], scores [B, k], item ids [B, k]


def scored(source: Source, parts: Iterable[np.ndarray], k: int, exclude_seen: bool) -> Iterator[Scored]:
    """Each chunk of users with its top-k, in order; ``source.workers`` chunks are scored at once and at
    most one more waits, so memory stays a few chunks whatever the number of users."""
    def score(part: np.ndarray) -> Scored:
        items, seen = source.batch(part)
        scores, ids = source.topk(items, seen if exclude_seen else np.zeros((len(part), 1), np.int64), k)
        return part, scores, ids

    if source.workers <= 1:
        yield from map(score, parts)
        return
    pool = ThreadPoolExecutor(source.workers, thread_name_prefix="predict")
    pending: deque[Future[Scored]] = deque()
    try:
        for part in parts:
            pending.append(pool.submit(score, part))
            if len(pending) > source.workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _Writer:
    """Row groups to Parquet, or rows to CSV, chosen by the output's extension."""

    def __init__(self, tmp: Path, out: Path, wide: bool) -> None:
        import pyarrow as pa

        self.pa, self.tmp, self.wide = pa, tmp, wide
        self.csv = out.suffix.lower() == ".csv"
        if wide and not self.csv:
            fields = [("user_id", pa.string()), ("item_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))]
        elif wide:  # CSV has no lists: JSON arrays in the cells (ids may hold spaces or commas)
            fields = [("user_id", pa.string()), ("item_ids", pa.string()), ("scores", pa.string())]
        else:
            fields = [("user_id", pa.string()), ("rank", pa.int32()), ("item_id", pa.string()), ("score", pa.float32())]
        self.schema = pa.schema(fields)
        if self.csv:
            import pyarrow.csv as pcsv

            self.writer: Any = pcsv.CSVWriter(str(tmp), self.schema)
        else:
            import pyarrow.parquet as pq

            # Dictionary pages for the columns that repeat (ids, ranks), none for the scores: trying them on
            # 50 distinct floats per user cost more than the scoring (benchmarks/predict_bench.py).
            strings = [name for name, kind in fields if kind not in (pa.float32(), pa.list_(pa.float32()))]
            self.writer = pq.ParquetWriter(str(tmp), self.schema, compression="zstd", use_dictionary=strings)
        self.rows, self.buffered = 0, []

    def write(self, users: Any, scores: np.ndarray, ids: Any, item_ids: Any) -> None:
        """``users`` [B] raw ids (arrow), ``scores``/``ids`` [B, k]; -inf entries are dropped (a user with
        fewer than k unseen items)."""
        pa = self.pa
        keep = np.isfinite(scores)
        counts = keep.sum(1)
        items = item_ids.take(pa.array(ids[keep]))
        vals = scores[keep].astype(np.float32)
        if self.wide:
            offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
            if self.csv:
                id_lists = [json.dumps(x, ensure_ascii=False) for x in
                            pa.ListArray.from_arrays(offsets, items).to_pylist()]
                sc_lists = ["[" + ",".join(f"{v:.7g}" for v in x) + "]" for x in
                            pa.ListArray.from_arrays(offsets, pa.array(vals)).to_pylist()]
                cols = [users, pa.array(id_lists), pa.array(sc_lists)]
            else:
                cols = [users, pa.ListArray.from_arrays(offsets, items),
                        pa.ListArray.from_arrays(offsets, pa.array(vals))]
        else:
            rank = (np.cumsum(keep, axis=1)[keep]).astype(np.int32)
            rows = pa.array(np.repeat(np.arange(len(counts)), counts))
            cols = [users.take(rows), pa.array(rank), items, pa.array(vals)]
        table = pa.Table.from_arrays(cols, schema=self.schema)
        self.rows += table.num_rows
        if self.csv:
            self.writer.write(table)
            return
        self.buffered.append(table)
        if sum(t.num_rows for t in self.buffered) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.buffered:
            table = self.pa.concat_tables(self.buffered)
            self.writer.write_table(table, row_group_size=table.num_rows)
            self.buffered = []

    def close(self) -> None:
        if not self.csv:
            self._flush()
        self.writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())


def predict(source: Source, out: str | os.PathLike[str], *, users: str = "all", k: int = 50,
            exclude_seen: bool = False, wide: bool = False, chunk_users: int | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Write the top-``k`` of ``users`` to ``out`` (.parquet or .csv) and return a summary."""
    import time

    import pyarrow as pa

    out = Path(out)
    if out.suffix.lower() not in (".parquet", ".csv"):
        raise UsageError(f"--out {out}: the extension picks the format", "name it .parquet or .csv")
    if not 1 <= k <= len(source.item_ids) - 1:
        raise UsageError(f"--k {k} is out of range", f"use 1..{len(source.item_ids) - 1} (the number of items)")
    wanted = read_users(users, source)
    if source.ordered:  # similar lengths share a chunk, so most chunks are padded to far less than max_len
        wanted = wanted[np.argsort(source.lengths(wanted), kind="stable")]
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    item_ids, user_ids = pa.array(source.item_ids), pa.array(source.user_ids)
    started = time.monotonic()
    writer = _open_out(out, tmp, wide)  # before any scoring: a bad --out is an error now, not in an hour
    bar = None
    try:
        bar = _progress(len(wanted)) if progress else None
        parts = chunks(wanted, len(source.item_ids), chunk_users or source.chunk)
        for part, scores, ids in scored(source, parts, k, exclude_seen):
            writer.write(user_ids.take(pa.array(part)), scores, ids, item_ids)
            if bar is not None:
                bar[0].update(bar[1], advance=len(part))
        writer.close()
        try:
            os.replace(tmp, out)
        except OSError as exc:
            raise UsageError(f"--out {out}: cannot write it ({exc.strerror or exc})",
                             "choose a file path in a folder you can write") from None
        fsync_dir(out.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    finally:
        if bar is not None:
            bar[0].stop()
    elapsed = time.monotonic() - started
    return {"out": str(out), "users": len(wanted), "rows": writer.rows, "k": k, "seconds": round(elapsed, 3),
            "users_per_s": round(len(wanted) / elapsed, 1) if elapsed else None, "device": source.device}


def _open_out(out: Path, tmp: Path, wide: bool) -> _Writer:
    """The writer of the temp file next to ``out``; a path that cannot be written is one line."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder", "give a file name ending in .parquet or .csv")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return _Writer(tmp, out, wide)
    except OSError as exc:  # a parent that is a file, a read-only or full disk, no permission
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UsageError(f"--out {out}: cannot write there ({exc.strerror or exc})",
                         "choose a file path in a folder you can write") from None


def _progress(total: int) -> tuple[Any, Any]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    class _Rate(TextColumn):
        def render(self, task: Any) -> Any:  # users/s, which rich has no column for
            from rich.text import Text

            rate = task.completed / task.elapsed if task.elapsed else 0  # rich's own speed needs many samples
            return Text(f"{rate:,.0f} users/s")

    p = Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), _Rate(""),
                 TextColumn("ETA"), TimeRemainingColumn(), console=Console(file=sys.stderr), transient=False)
    task = p.add_task("predict", total=total)
    p.start()
    return p, task

