"""The recommendation API: a FastAPI app over one trained experiment.

``create_app(experiment_dir)`` returns the app; uvicorn serves it (``mlconnect serve``). The model
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
import hmac
import json
import logging
import math
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlconnect.serving.batcher import Batcher, Overloaded

log = logging.getLogger("mlconnect.serving")

DEFAULT_MAX_BATCH = 64          # requests in one POST /recommend/batch, and sequences per forward
DEFAULT_MAX_ITEMS = 1000        # ids in one `items` sequence (the model reads the last max_len)
DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_K = 100

ItemId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


# -- request / response models (they also make the OpenAPI schema) ------------------------------

class RecommendRequest(BaseModel):
    """Exactly one of ``user_id`` (use that user's whole history) or ``items`` (a sequence)."""

    # Numbers are accepted as ids (`{"user_id": 196}`): raw ids are strings in RecBole files.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    user_id: ItemId | None = Field(None, description="A user of the training data (raw id).")
    items: list[ItemId] | None = Field(None, min_length=1,
                                       description="Raw item ids in time order, oldest first.")
    # Strict: `"k": true` or `"exclude_seen": "yes"` are mistakes to report, not to coerce.
    k: int = Field(10, ge=1, le=MAX_K, strict=True, description="How many items to return.")
    exclude_seen: bool = Field(True, strict=True, description="Leave out items already in the sequence.")

    @model_validator(mode="after")
    def _one_source(self) -> RecommendRequest:
        if (self.user_id is None) == (self.items is None):
            raise ValueError("give exactly one of user_id or items")
        return self


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests: list[RecommendRequest] = Field(min_length=1)


class ScoredItem(BaseModel):
    item_id: str
    score: float
    metadata: dict[str, Any] | None = Field(None, description="Fields of the .item file (details=true).")


class RecommendResponse(BaseModel):
    items: list[ScoredItem]
    model: str
    experiment: str


class BatchResponse(BaseModel):
    results: list[RecommendResponse]


class Health(BaseModel):
    status: str = Field(description="ok, loading or failed")
    experiment: str
    error: str | None = None


class ModelInfo(BaseModel):
    experiment: str
    model: str
    dataset: str
    metrics: dict[str, Any]
    created: str | None
    n_items: int
    device: str
    max_batch: int
    max_items: int


# -- responses -----------------------------------------------------------------------------------

def _finite(obj: Any) -> Any:
    """NaN/inf (a diverged checkpoint, a metric that could not be computed) become null: JSON has none."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    # ensure_ascii: a lone surrogate echoed back from the input must not make encoding fail (500).
    try:
        data = json.dumps(body, ensure_ascii=True, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:
        data = json.dumps(_finite(body), ensure_ascii=True, separators=(",", ":"), default=str)
    return Response(data, status_code=status, media_type="application/json", headers=headers)


def _error(loc: list[Any], msg: str, kind: str, value: Any = None) -> dict[str, Any]:
    # The same shape as FastAPI's own validation errors, so clients parse one format.
    return {"type": kind, "loc": loc, "msg": msg, "input": value}


class _Rejected(Exception):
    """A request that passed the schema but not the model's vocabulary or the server's limits."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors


# -- ASGI guards ---------------------------------------------------------------------------------

async def _send_json(send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class ApiKeyMiddleware:
    """Every request must carry ``X-API-Key``; compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"")
            if not hmac.compare_digest(given, self.key):
                what = "wrong" if given else "missing"
                await _send_json(send, 401, {"detail": f"{what} API key: send it in the X-API-Key header"},
                                 [(b"www-authenticate", b"ApiKey")])
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for bodies over ``limit`` bytes: by Content-Length up front, and by counting as they stream.

    The whole body is read here (it is small: the limit is a megabyte) and replayed to the app, so
    a chunked upload that grows past the limit is refused before any handler sees it.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_big = {"detail": f"request body is larger than {self.limit} bytes: send fewer or shorter "
                             f"sequences, or split the batch"}
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_json(send, 400, {"detail": "Content-Length is not a number"},
                                 [(b"connection", b"close")])
                return
            if size > self.limit:
                await _send_json(send, 413, too_big, [(b"connection", b"close")])
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await _send_json(send, 413, too_big, [(b"connection", b"close")])
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # afterwards: wait for the disconnect, as the server would

        await self.app(scope, replay, send)


# -- the model, loaded in the background ---------------------------------------------------------

class _Served:
    """What the handlers share: the recommender once loaded, its batcher, and the load state."""

    def __init__(self, experiment_dir: Path, device: str, max_batch: int, max_items: int,
                 wait_ms: float, loader: Callable[[], Any] | None = None) -> None:
        self.experiment_dir, self.device, self.loader = experiment_dir, device, loader
        self.max_batch, self.max_items, self.wait_ms = max_batch, max_items, wait_ms
        self.name = experiment_dir.resolve().name  # "experiments/exp_001/" and "." name it too
        self.rec: Any = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.model_name = ""

    def load(self) -> None:
        """Runs in a worker thread: load weights-only, warm up, then start the batcher."""
        if self.loader is not None:  # a bundle (mlconnect.deploy.server): ONNX Runtime, torch never imported
            rec = self.loader()
            run = rec.recommend
        else:
            import torch

            from mlconnect.engine.inference import Recommender

            rec = Recommender.load(self.experiment_dir, device=self.device)
            rec.model.eval()  # Recommender.load does this already; serving must never run in train mode

            def run(histories: list[list[str]], k: int, exclude_seen: bool) -> list[list[tuple[str, float]]]:
                with torch.inference_mode():
                    return rec.recommend(histories, k=k, exclude_seen=exclude_seen)

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

def create_app(experiment_dir: str | Path, *, device: str = "cpu", api_key: str | None = None,
               max_batch: int = DEFAULT_MAX_BATCH, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_items: int = DEFAULT_MAX_ITEMS, batch_wait_ms: float = 0.0,
               on_load_error: Callable[[str], None] | None = None,
               loader: Callable[[], Any] | None = None) -> FastAPI:
    """The API for one experiment folder. The model loads when the server starts (lifespan).

    ``max_batch`` caps both ``POST /recommend/batch`` and the sequences in one forward pass.
    ``on_load_error`` is called with the reason if loading fails (the CLI uses it to exit).
    ``loader`` replaces the engine: it returns an object with Recommender's serving interface
    (mlconnect.deploy.server's bundle recommender).
    """
    served = _Served(Path(experiment_dir), device, max_batch, max_items, batch_wait_ms, loader)

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

