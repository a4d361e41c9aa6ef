"""The recommendation API: a FastAPI app over one recommender, with no torch or engine import of its own.

``build_app(dir, loader=...)`` returns the app; serving.app gives it the engine (``mlconnect serve``),
mlconnect.deploy.server a bundle under ONNX Runtime (``serve --bundle``). The model
loads in a background thread when the server starts, so ``GET /health`` can answer 503 while it
loads (or if loading failed) and 200 once the model is warm. Requests are validated in full before
any inference: unknown ids, empty or oversized sequences and out-of-range ``k`` are 422s that say
what was wrong; bodies over the limit are 413s; a configured API key makes every request without
the ``X-API-Key`` header a 401.

Speed (see benchmarks/serve_bench.py): responses are serialised by hand with ``json.dumps`` rather
than validated again through ``response_model``; the two guards are plain ASGI middleware (no
``BaseHTTPMiddleware`` task per request); inference goes through the micro-batcher, whose worker
thread owns the model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from mlconnect.serving.batcher import Batcher, Overloaded
from mlconnect.serving.guards import ApiKeyMiddleware, BodyLimitMiddleware
from mlconnect.serving.schemas import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_ITEMS,
    MAX_K,
    BatchRequest,
    BatchResponse,
    Health,
    ModelInfo,
    RecommendRequest,
    RecommendResponse,
    _error,
    _json,
)

log = logging.getLogger("mlconnect.serving")

Ranker = Callable[[list[list[str]], int, bool], list[list[tuple[str, float]]]]
Loader = Callable[[], "tuple[Any, Ranker]"]


# -- the model, loaded in the background ---------------------------------------------------------

class _Served:
    """What the handlers share: the recommender once loaded, its batcher, and the load state."""

    def __init__(self, experiment_dir: Path, loader: Loader, max_batch: int, max_items: int,
                 wait_ms: float) -> None:
        self.experiment_dir, self.loader = experiment_dir, loader
        self.max_batch, self.max_items, self.wait_ms = max_batch, max_items, wait_ms
        self.name = experiment_dir.resolve().name  # "experiments/exp_001/" and "." name it too
        self.rec: Any = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.model_name = ""

    def load(self) -> None:
        """Runs in a worker thread: load (the loader: weights-only engine, or a bundle), warm up, then
        start the batcher."""
        rec, run = self.loader()
        if not rec.known_items:
            raise ValueError(f"{self.experiment_dir} has an empty item vocabulary")
        any_item = next(iter(rec.known_items))
        for _ in range(3):  # the first forwards allocate and pick kernels: do that before "ready"
            run([[any_item]], MAX_K, True)
        batcher = Batcher(run, max_batch=self.max_batch, wait_ms=self.wait_ms)
        batcher.start()
        self.model_name = str(rec.info["model"])
        self.batcher, self.rec = batcher, rec  # rec last: handlers test it for readiness

    def check(self, req: RecommendRequest, loc: list[Any]) -> tuple[list[str], list[dict[str, Any]]]:
        """The history to rank, or the errors that make this request a 422."""
        rec = self.rec
        if req.user_id is not None:
            if req.user_id not in rec.known_users:
                return [], [_error([*loc, "user_id"], f"unknown user id {req.user_id!r}: not a user of "
                                   f"the training data of {self.name}", "unknown_user", req.user_id)]
            return rec.user_history(req.user_id), []
        items = req.items or []
        if len(items) > self.max_items:
            return [], [_error([*loc, "items"], f"items has {len(items)} ids; this server accepts at "
                               f"most {self.max_items} per sequence", "too_long", len(items))]
        known = rec.known_items
        unknown = list(dict.fromkeys(i for i in items if i not in known))
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
            return [], [_error([*loc, "items"], f"unknown item ids {shown}: not in the training "
                               f"vocabulary of {self.name}", "unknown_items", unknown)]
        return items, []

    def render(self, ranked: list[tuple[str, float]], details: bool) -> dict[str, Any]:
        if details:
            meta = self.rec.item_metadata
            items = [{"item_id": i, "score": s, "metadata": meta(i)} for i, s in ranked]
        else:
            items = [{"item_id": i, "score": s} for i, s in ranked]
        return {"items": items, "model": self.model_name, "experiment": self.name}


def _not_ready(served: _Served) -> Response:
    if served.error:
        return _json(503, {"detail": f"the model failed to load: {served.error}"})
    return _json(503, {"detail": "the model is loading: retry when GET /health answers 200"},
                 {"retry-after": "1"})


# -- the app ------------------------------------------------------------------------------------

def build_app(experiment_dir: str | Path, *, loader: Loader, device: str = "cpu", api_key: str | None = None,
               max_batch: int = DEFAULT_MAX_BATCH, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_items: int = DEFAULT_MAX_ITEMS, batch_wait_ms: float = 0.0,
               on_load_error: Callable[[str], None] | None = None) -> FastAPI:
    """The API for one experiment folder. The model loads when the server starts (lifespan).

    ``max_batch`` caps both ``POST /recommend/batch`` and the sequences in one forward pass.
    ``on_load_error`` is called with the reason if loading fails (the CLI uses it to exit).
    ``loader()`` returns ``(recommender, run)``: an object with Recommender's serving interface
    (``known_items``, ``info``, ``history``...) and ``run(histories, k, exclude_seen)`` that ranks a
    batch. serving.app passes the engine's; mlconnect.deploy.server a bundle's (ONNX Runtime).
    """
    served = _Served(Path(experiment_dir), loader, max_batch, max_items, batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        async def load() -> None:
            try:
                await asyncio.to_thread(served.load)
                log.info("model ready: %s (%s on %s)", served.name, served.model_name, device)
            except Exception as exc:  # health reports it; the CLI turns it into one error line
                served.error = str(exc) or type(exc).__name__
                log.error("could not load %s: %s", served.experiment_dir, served.error)
                if on_load_error is not None:
                    on_load_error(served.error)

        task = asyncio.create_task(load())
        try:
            yield
        finally:
            # Graceful: uvicorn has already finished the in-flight requests; stop the worker.
            if not task.done():
                await asyncio.wait([task], timeout=30)
            if served.batcher is not None:
                await asyncio.to_thread(served.batcher.close)

    app = FastAPI(title="mlconnect recommendations", version="1",
                  description=f"Top-K recommendations from experiment {served.name}.", lifespan=lifespan)
    app.state.served = served

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = []
        ctype = request.headers.get("content-type", "")
        for e in exc.errors():
            value = e.get("input")
            if isinstance(value, bytes):  # a non-JSON body is echoed as text, not as b'...'
                value = value[:200].decode("utf-8", "replace")
            err = _error(list(e.get("loc", ())), str(e.get("msg", "")), str(e.get("type", "")), value)
            if e.get("type") == "json_invalid":
                err["msg"] = f"the body is not valid JSON: {e.get('ctx', {}).get('error', '')}"
            elif list(e.get("loc", ())) == ["body"] and "json" not in ctype:
                err["msg"] += " (send the body as JSON with Content-Type: application/json)"
            errors.append(err)
        return _json(422, {"detail": errors})

    async def rank(histories: list[list[str]], reqs: list[RecommendRequest]) -> list[list[tuple[str, float]]]:
        """One batcher job per exclude_seen value (so a batch is one forward, not a race for the
        worker); it ranks to the largest k asked for and each request keeps its own prefix."""
        assert served.batcher is not None
        out: list[list[tuple[str, float]]] = [[] for _ in reqs]
        groups = {flag: [n for n, r in enumerate(reqs) if r.exclude_seen is flag] for flag in (True, False)}
        groups = {flag: idx for flag, idx in groups.items() if idx}
        ranked = await asyncio.gather(*[
            served.batcher.submit([histories[n] for n in idx], max(reqs[n].k for n in idx), flag)
            for flag, idx in groups.items()])
        for idx, part in zip(groups.values(), ranked):
            for n, r in zip(idx, part):
                out[n] = r[: reqs[n].k]
        return out

    @app.post("/recommend", response_model=RecommendResponse,
              responses={422: {"description": "invalid request, unknown ids"}, 503: {"description": "not ready"}})
    async def recommend(req: RecommendRequest, details: bool = Query(False)) -> Response:
        """Top-``k`` items for one user or one sequence."""
        if served.rec is None:
            return _not_ready(served)
        history, errors = served.check(req, ["body"])
        if errors:
            return _json(422, {"detail": errors})
        try:
            assert served.batcher is not None
            ranked = (await served.batcher.submit([history], req.k, req.exclude_seen))[0]
        except Overloaded as exc:
            return _json(503, {"detail": f"overloaded ({exc}): retry shortly"}, {"retry-after": "1"})
        return _json(200, served.render(ranked, details))

    @app.post("/recommend/batch", response_model=BatchResponse,
              responses={422: {"description": "invalid request, unknown ids"}, 503: {"description": "not ready"}})
    async def recommend_batch(body: BatchRequest, details: bool = Query(False)) -> Response:
        """Several requests in one call (at most ``max_batch``); all are checked before any runs."""
        if served.rec is None:
            return _not_ready(served)
        if len(body.requests) > served.max_batch:
            return _json(422, {"detail": [_error(["body", "requests"], f"{len(body.requests)} requests; "
                                          f"this server accepts at most {served.max_batch} per batch",
                                          "too_long", len(body.requests))]})
        histories, errors = [], []
        for n, req in enumerate(body.requests):
            history, errs = served.check(req, ["body", "requests", n])
            histories.append(history)
            errors.extend(errs)
        if errors:
            return _json(422, {"detail": errors})
        try:
            ranked = await rank(histories, body.requests)
        except Overloaded as exc:
            return _json(503, {"detail": f"overloaded ({exc}): retry shortly"}, {"retry-after": "1"})
        return _json(200, {"results": [served.render(r, details) for r in ranked]})

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> Response:
        """200 once the model is loaded and warm; 503 while loading or if loading failed."""
        if served.rec is not None:
            return _json(200, {"status": "ok", "experiment": served.name})
        status = "failed" if served.error else "loading"
        return _json(503, {"status": status, "experiment": served.name, "error": served.error})

    @app.get("/model", response_model=ModelInfo, responses={503: {"description": "not ready"}})
    async def model_info() -> Response:
        """What is being served: experiment, model, dataset, metrics, created, n_items."""
        if served.rec is None:
            return _not_ready(served)
        info = dict(served.rec.info)
        info.update(device=device, max_batch=served.max_batch, max_items=served.max_items)
        if served.batcher is not None:  # how much micro-batching happened so far
            info["batches"], info["sequences"] = served.batcher.batches, served.batcher.sequences
        return _json(200, info)

    # Added last = outermost: the key is checked before the body is even read.
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
    return app

