"""Fuzz the live API from its own OpenAPI schema: no input may produce a 5xx.

Bodies are drawn from the request schemas the server publishes (with real item/user ids mixed in,
so valid requests reach the model), then some are broken on purpose: a key dropped or added, a
value swapped for arbitrary JSON, or raw bytes instead of JSON. Hypothesis keeps it bounded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_serve import KEY, LiveServer, live, trained_experiment  # plain helpers, not fixtures

from mlconnect.serving.app import create_app

MAX_ITEMS = 60

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


def from_schema(schema: dict[str, Any], spec: dict[str, Any], ids: list[str]) -> st.SearchStrategy[Any]:
    """A strategy for values that conform to ``schema`` (the subset FastAPI emits)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return st.deferred(lambda: from_schema(spec["components"]["schemas"][name], spec, ids))
    if "anyOf" in schema:
        return st.one_of([from_schema(s, spec, ids) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return st.fixed_dictionaries(
            {k: from_schema(v, spec, ids) for k, v in props.items() if k in required},
            optional={k: from_schema(v, spec, ids) for k, v in props.items() if k not in required})
    if kind == "array":
        lo = schema.get("minItems", 0)
        hi = min(schema.get("maxItems", MAX_ITEMS + 5), MAX_ITEMS + 5)
        return st.lists(from_schema(schema["items"], spec, ids), min_size=lo, max_size=hi)
    if kind == "string":
        lo, hi = schema.get("minLength", 0), min(schema.get("maxLength", 40), 40)
        return st.sampled_from(ids) | st.text(min_size=lo, max_size=hi)
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return json_values


def broken(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid bodies, bent: one key removed, one added, or one value replaced by arbitrary JSON."""
    def bend(draw: Any) -> Any:
        body = draw(valid)
        if not isinstance(body, dict):
            return body
        how = draw(st.sampled_from(["drop", "add", "swap"]))
        if how == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif how == "add":
            body[draw(st.text(max_size=8))] = draw(json_values)
        elif body:
            body[draw(st.sampled_from(sorted(body)))] = draw(json_values)
        return body
    return st.composite(lambda draw: bend(draw))()


def plausible(ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """What the schema cannot say (exactly one of user_id / items), so that many requests succeed."""
    source = (st.fixed_dictionaries({"user_id": st.sampled_from(ids)})
              | st.fixed_dictionaries({"items": st.lists(st.sampled_from(ids), min_size=1, max_size=70)}))
    extra = st.fixed_dictionaries({}, optional={"k": st.integers(0, 102), "exclude_seen": st.booleans()})
    return st.builds(lambda a, b: {**a, **b}, source, extra)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, synth_dataset: tuple[Path, str]) -> Iterator[LiveServer]:
    exp = trained_experiment(tmp_path_factory.getbasetemp(), synth_dataset)
    app = create_app(exp, api_key=KEY, max_batch=8, max_items=MAX_ITEMS, max_body_bytes=16384)
    with live(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def spec(fuzz_server: LiveServer) -> dict[str, Any]:
    return httpx.get(fuzz_server.url + "/openapi.json", headers={"X-API-Key": KEY}).json()


@pytest.mark.parametrize("path", ["/recommend", "/recommend/batch"])
def test_no_input_gives_a_5xx(fuzz_server: LiveServer, spec: dict[str, Any], path: str) -> None:
    op = spec["paths"][path]["post"]
    body_schema = op["requestBody"]["content"]["application/json"]["schema"]
    ids = ["1", "50", "181", "200", "196", "13", "0", "[PAD]", "\ud800"]  # "181": a user, not an item
    valid = from_schema(body_schema, spec, ids)
    good = plausible(["1", "50", "181", "200", "196", "13", "7"])
    valid = valid | (good if path == "/recommend" else st.builds(
        lambda r: {"requests": r}, st.lists(good, min_size=1, max_size=10)))
    bodies = st.one_of(valid, valid, valid, broken(valid), json_values)
    details = st.none() | st.sampled_from(["true", "false", "1", "maybe", ""])
    raw = st.none() | st.none() | st.binary(max_size=200)

    seen: dict[int, int] = {}
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as client:
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
        @given(body=bodies, detail=details, payload=raw, keyed=st.sampled_from([True, True, True, False]))
        def check(body: Any, detail: str | None, payload: bytes | None, keyed: bool) -> None:
            headers = {"content-type": "application/json"}
            if keyed:
                headers["X-API-Key"] = KEY
            params = {"details": detail} if detail is not None else {}
            if payload is not None:
                r = client.post(path, content=payload, params=params, headers=headers)
            else:
                # ensure_ascii: lone surrogates travel as \ud800 escapes; NaN as Python writes it.
                content = json.dumps(body, ensure_ascii=True).encode()
                r = client.post(path, content=content, params=params, headers=headers)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (body, payload, r.status_code, r.text)
            if not keyed:
                assert r.status_code == 401
            if r.status_code == 200:
                out = r.json()
                results = out["results"] if path.endswith("batch") else [out]
                for res in results:
                    assert all(isinstance(s["item_id"], str) and isinstance(s["score"], float)
                               for s in res["items"])
            else:
                assert r.json()["detail"]  # every refusal says why

        check()
    # The fuzz reached the model, not only the validators.
    assert seen.get(200, 0) > 0 and seen.get(422, 0) > 0, seen
