"""The API's wire format: request and response models (they also make the OpenAPI schema), limits,
and the hand-written JSON responses. Imports neither torch nor the engine, so a torch-free server can
speak the same API."""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

DEFAULT_MAX_BATCH = 64          # requests in one POST /recommend/batch, and sequences per forward
DEFAULT_MAX_ITEMS = 1000        # ids in one `items` sequence (the model reads the last max_len)
DEFAULT_MAX_BODY_BYTES = 1 << 20
MAX_K = 100

# Any id training accepts must be servable (URLs as item ids run past 256 characters); the body limit
# (max_body_bytes, 413) is what bounds a request, this only stops one absurd string.
MAX_ID_CHARS = 4096
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


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
