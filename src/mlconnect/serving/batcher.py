"""Micro-batching: requests that arrive while the model is busy share the next forward pass.

One worker thread owns the model. It blocks until a request arrives, then takes everything else
already queued (up to ``max_batch`` sequences) and runs a single ``recommend`` call. At
concurrency 1 nothing waits: the queue holds one job and it runs at once. Under load the batch
grows by itself while the previous forward runs ("natural batching"), which on CPU costs far
less per sequence than one forward each. ``wait_ms`` adds an optional short window to collect
more requests; the benchmark decides whether it helps (on the 2-core box it does not).

A thread rather than the event loop: torch releases the GIL inside its kernels, so uvicorn keeps
parsing HTTP for the next requests while the model computes.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("mlconnect.serving")

Ranked = list[tuple[str, float]]
RecommendFn = Callable[[list[list[str]], int, bool], list[Ranked]]


class Overloaded(Exception):
    """More sequences are waiting than ``max_queue``: the caller answers 503 and the client retries."""


@dataclass
class _Job:
    histories: list[list[str]]
    k: int
    exclude_seen: bool
    future: asyncio.Future[list[Ranked]]
    loop: asyncio.AbstractEventLoop
    queued_at: float = field(default_factory=time.perf_counter)


def _resolve(job: _Job, result: list[Ranked] | None, error: BaseException | None) -> None:
    """Runs on the event loop: a client that went away has a cancelled future; leave it alone."""
    if job.future.done():
        return
    if error is not None:
        job.future.set_exception(error)
    else:
        job.future.set_result(result)  # type: ignore[arg-type]


class Batcher:
    """Owns ``fn`` (the model) in one thread; ``submit`` is awaited from request handlers."""

    def __init__(self, fn: RecommendFn, *, max_batch: int = 64, wait_ms: float = 0.0,
                 max_queue: int = 4096) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._fn = fn
        self.max_batch = max_batch
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self.max_queue = max_queue
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending = 0  # sequences queued, not yet taken by the worker (for 503s)
        self._lock = threading.Lock()  # _pending is updated from the loop and the worker
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # counters for /model and the benchmark: how much batching happened
        self.sequences = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mlconnect-batcher", daemon=True)
        self._thread.start()

    async def submit(self, histories: list[list[str]], k: int, exclude_seen: bool) -> list[Ranked]:
        """Rank ``histories``; the result list has one ranked list per history, in order."""
        if self._closed:
            raise Overloaded("the server is shutting down")
        if self._pending + len(histories) > self.max_queue:
            raise Overloaded(f"{self._pending} sequences are already waiting")
        loop = asyncio.get_running_loop()
        job = _Job(histories, k, exclude_seen, loop.create_future(), loop)
        with self._lock:
            self._pending += len(histories)
        self._queue.put(job)
        return await job.future

    def close(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the worker (graceful shutdown)."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)

    # -- worker thread ------------------------------------------------------------------------

    def _take(self, first: _Job) -> tuple[list[_Job], bool]:
        """``first`` plus whatever is queued, up to ``max_batch`` sequences; True if told to stop."""
        jobs, size, stop = [first], len(first.histories), False
        deadline = time.perf_counter() + self.wait_s
        while size < self.max_batch:
            try:
                remaining = deadline - time.perf_counter()
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                stop = True
                break
            jobs.append(nxt)
            size += len(nxt.histories)
        return jobs, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._take(first)
            with self._lock:
                self._pending -= sum(len(j.histories) for j in jobs)
            # One forward per exclude_seen value; k is the largest asked for, each job keeps its
            # own prefix (the top-k of a longer ranking, cut to k, is the top-k).
            for flag in (True, False):
                group = [j for j in jobs if j.exclude_seen is flag]
                if group:
                    self._run_group(group, flag)
        # Drain anything that raced with the stop signal so no request hangs.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._run_group([job], job.exclude_seen)

    def _run_group(self, jobs: list[_Job], exclude_seen: bool) -> None:
        histories = [h for j in jobs for h in j.histories]
        k = max(j.k for j in jobs)
        try:
            ranked = self._fn(histories, k, exclude_seen)
        except Exception as exc:  # one bad job must not fail its neighbours: retry them alone
            if len(jobs) > 1:
                for j in jobs:
                    self._run_group([j], exclude_seen)
                return
            log.exception("recommend failed for a batch of %d", len(histories))
            jobs[0].loop.call_soon_threadsafe(_resolve, jobs[0], None, exc)
            return
        self.batches += 1
        self.sequences += len(histories)
        start = 0
        for j in jobs:
            part = [r[: j.k] for r in ranked[start:start + len(j.histories)]]
            start += len(j.histories)
            j.loop.call_soon_threadsafe(_resolve, j, part, None)
