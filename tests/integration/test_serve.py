"""The recommendation API on a real uvicorn server, with a checkpoint from a tiny real training.

In-process servers (a thread running ``uvicorn.Server`` on a free 127.0.0.1 port) check answers
against the engine's own ``Recommender``; subprocess runs of ``mlconnect serve`` check the CLI's
error lines and graceful shutdown. Nothing is mocked and no traffic leaves loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from mlconnect.engine.inference import Recommender
from mlconnect.serving.app import create_app
from mlconnect.serving.batcher import Batcher
from support.sshd import free_port

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
KEY = "test-key-0123456789"

torch.set_num_threads(1)  # two cores shared by everyone's tests


# -- helpers shared with test_serve_fuzz.py -------------------------------------------------------

def trained_experiment(base: Path, dataset: tuple[Path, str]) -> Path:
    """A one-epoch SASRec on the session's synthetic dataset (a few seconds); reused by every module."""
    exp = base / "serve-exp"
    if (exp / "checkpoints" / "best.pt").is_file():
        return exp
    from mlconnect.engine.config import load_config
    from mlconnect.engine.trainer import train

    cfg = load_config(REPO / "configs" / "baseline.yaml",
                      {"data_path": str(dataset[0]), "dataset": dataset[1], "epochs": 1, "hidden_size": 16,
                       "inner_size": 32,
                       "n_layers": 1, "num_threads": 1, "seed": 3})
    train(cfg, exp)
    return exp



class LiveServer:
    """``uvicorn.Server`` in a thread on a socket we bound to 127.0.0.1:0."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, wait_ready: bool = True) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                code = httpx.get(self.url + "/health", headers={"X-API-Key": KEY}, timeout=2).status_code
                if code == 200 or (code == 503 and not wait_ready):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError("server did not come up")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()
        assert not self.thread.is_alive()


@contextlib.contextmanager
def live(app: Any, wait_ready: bool = True) -> Iterator[LiveServer]:
    srv = LiveServer(app).start(wait_ready)
    try:
        yield srv
    finally:
        srv.stop()


def assert_same_ranking(served: list[dict[str, Any]], expected: list[tuple[str, float]]) -> None:
    """Same ids in the same order with the same scores; two ids may swap only if their scores tie
    (a batch of 16 and a batch of 1 may round the last bit differently)."""
    assert len(served) == len(expected)
    exp_score = dict(expected)
    for (got_id, got_score), (want_id, want_score) in zip(
            [(s["item_id"], s["score"]) for s in served], expected):
        assert math.isclose(got_score, want_score, rel_tol=1e-5, abs_tol=1e-5)
        if got_id != want_id:
            assert got_id in exp_score and math.isclose(exp_score[got_id], want_score, abs_tol=1e-5)


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory, synth_dataset: tuple[Path, str]) -> Path:
    return trained_experiment(tmp_path_factory.getbasetemp(), synth_dataset)


@pytest.fixture(scope="module")
def rec(experiment: Path) -> Recommender:
    return Recommender.load(experiment)


@pytest.fixture(scope="module")
def server(experiment: Path) -> Iterator[LiveServer]:
    with live(create_app(experiment)) as srv:
        yield srv


@pytest.fixture(scope="module")
def strict(experiment: Path) -> Iterator[LiveServer]:
    """Small limits and an API key, to reach every refusal cheaply."""
    app = create_app(experiment, api_key=KEY, max_batch=4, max_items=60, max_body_bytes=4096)
    with live(app) as srv:
        yield srv


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# -- answers equal the engine's ------------------------------------------------------------------

@pytest.mark.parametrize("k,exclude_seen", [(1, True), (10, True), (100, False)])
def test_items_answer_equals_engine_top_k(client: httpx.Client, rec: Recommender, k: int,
                                          exclude_seen: bool) -> None:
    for user in ("1", "196", "300"):
        items = rec.user_history(user)[:30]
        r = client.post("/recommend", json={"items": items, "k": k, "exclude_seen": exclude_seen})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "SASRec" and body["experiment"] == "serve-exp"
        assert_same_ranking(body["items"], rec.recommend([items], k=k, exclude_seen=exclude_seen)[0])
        if exclude_seen:
            assert not {s["item_id"] for s in body["items"]} & set(items)


def test_user_id_uses_the_whole_history(client: httpx.Client, rec: Recommender) -> None:
    user = max(sorted(rec.known_users, key=int), key=lambda u: len(rec.user_history(u)))
    history = rec.user_history(user)
    assert len(history) > rec.max_len  # long enough that truncation and exclusion both matter
    r = client.post("/recommend", json={"user_id": user, "k": 20})
    assert r.status_code == 200, r.text
    assert_same_ranking(r.json()["items"], rec.recommend([history], k=20)[0])
    # A number is accepted as an id, as users type it.
    assert client.post("/recommend", json={"user_id": int(user), "k": 20}).json() == r.json()


def test_batch_and_concurrent_requests_equal_engine(server: LiveServer, rec: Recommender) -> None:
    users = [str(u) for u in range(1, 33)]
    reqs = [{"user_id": u, "k": 5 + (i % 3) * 10, "exclude_seen": i % 4 != 0} for i, u in enumerate(users)]

    def expected(q: dict[str, Any]) -> list[tuple[str, float]]:
        return rec.recommend([rec.user_history(q["user_id"])], k=q["k"], exclude_seen=q["exclude_seen"])[0]

    r = httpx.post(server.url + "/recommend/batch", json={"requests": reqs}, timeout=30)
    assert r.status_code == 200, r.text
    for q, res in zip(reqs, r.json()["results"]):
        assert_same_ranking(res["items"], expected(q))

    async def fire() -> list[httpx.Response]:  # 32 at once: they share forwards in the batcher
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            return await asyncio.gather(*[c.post("/recommend", json=q) for q in reqs])

    for q, resp in zip(reqs, asyncio.run(fire())):
        assert resp.status_code == 200, resp.text
        assert_same_ranking(resp.json()["items"], expected(q))


def test_details_add_item_metadata(client: httpx.Client, rec: Recommender) -> None:
    r = client.post("/recommend", params={"details": "true"}, json={"items": ["1", "50"], "k": 5})
    assert r.status_code == 200, r.text
    for s in r.json()["items"]:
        assert s["metadata"] == rec.item_metadata(s["item_id"]) and s["metadata"]["title"]
    plain = client.post("/recommend", json={"items": ["1", "50"], "k": 5}).json()
    assert "metadata" not in plain["items"][0]


def test_health_and_model(client: httpx.Client, rec: Recommender, synth_dataset: tuple[Path, str]) -> None:
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    for key in ("experiment", "model", "dataset", "created", "n_items"):
        assert info[key] == rec.info[key]
    assert info["metrics"]["test"]["ndcg@10"] == pytest.approx(rec.info["metrics"]["test"]["ndcg@10"])
    data, name = synth_dataset
    items = {line.split("\t")[1] for line in (data / name / f"{name}.inter").read_text().splitlines()[1:]}
    assert info["n_items"] == len(items) and info["device"] == "cpu"


def test_batcher_merges_what_is_queued(rec: Recommender) -> None:
    """Jobs queued while the worker is busy run as one forward, and each keeps its own k."""
    calls: list[int] = []

    def fn(histories: list[list[str]], k: int, exclude_seen: bool) -> list[list[tuple[str, float]]]:
        calls.append(len(histories))
        return rec.recommend(histories, k=k, exclude_seen=exclude_seen)

    async def go() -> list[list[list[tuple[str, float]]]]:
        b = Batcher(fn, max_batch=64)
        tasks = [asyncio.ensure_future(b.submit([rec.user_history(str(u))], 3 + u, True)) for u in range(1, 11)]
        await asyncio.sleep(0)  # all ten are queued before the worker exists
        b.start()
        try:
            return await asyncio.gather(*tasks)
        finally:
            b.close()

    results = asyncio.run(go())
    assert calls == [10]
    for u, res in zip(range(1, 11), results):
        assert len(res[0]) == 3 + u
        assert [i for i, _ in res[0]] == [i for i, _ in rec.recommend([rec.user_history(str(u))], k=3 + u)[0]]


# -- every bad input gets its 4xx -----------------------------------------------------------------

BAD_BODIES = [
    ({"items": ["1", "no-such-item", "also-missing"]}, "unknown_items", "'no-such-item', 'also-missing'"),
    ({"user_id": "no-such-user"}, "unknown_user", "'no-such-user'"),
    ({"user_id": "1", "items": ["1"]}, "value_error", "exactly one of user_id or items"),
    ({"k": 5}, "value_error", "exactly one of user_id or items"),
    ({"items": []}, "too_short", "at least 1"),
    ({"items": ["1"] * 61}, "too_long", "at most 60"),
    ({"items": ["1"], "k": 0}, "greater_than_equal", "greater than or equal to 1"),
    ({"items": ["1"], "k": 101}, "less_than_equal", "less than or equal to 100"),
    ({"items": ["1"], "k": "ten"}, "int_type", "valid integer"),
    ({"items": ["1"], "k": True}, "int_type", "valid integer"),
    ({"items": ["1"], "exclude_seen": "yes"}, "bool_type", "valid boolean"),
    ({"items": "1"}, "list_type", "valid list"),
    ({"items": [""]}, "string_too_short", "at least 1 character"),
    ({"items": ["1"], "colour": "red"}, "extra_forbidden", "Extra inputs"),
    ([1, 2], "model_attributes_type", "valid dictionary"),
]


@pytest.mark.parametrize("body,kind,text", BAD_BODIES, ids=[b[1] + str(i) for i, b in enumerate(BAD_BODIES)])
def test_bad_requests_are_422_with_a_clear_message(strict: LiveServer, body: Any, kind: str, text: str) -> None:
    r = httpx.post(strict.url + "/recommend", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["type"] == kind and text in e["msg"] for e in errors), errors


def test_bad_json_and_wrong_content_type(strict: LiveServer) -> None:
    h = {"X-API-Key": KEY}
    r = httpx.post(strict.url + "/recommend", content=b'{"items": ["1",', headers={**h, "content-type":
                                                                                  "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"][0]["msg"]
    r = httpx.post(strict.url + "/recommend", content=b'{"items": ["1"]}',
                   headers={**h, "content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["detail"][0]["msg"]
    r = httpx.post(strict.url + "/recommend", content=b'\xff\xfe{"items"', headers={**h, "content-type":
                                                                                  "application/json"})
    assert 400 <= r.status_code < 500, r.text
    r = httpx.post(strict.url + "/recommend?details=perhaps", json={"items": ["1"]}, headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "details"]
    assert httpx.get(strict.url + "/recommend", headers=h).status_code == 405


def test_batch_limits_and_unknown_ids_by_position(strict: LiveServer) -> None:
    h = {"X-API-Key": KEY}
    r = httpx.post(strict.url + "/recommend/batch", json={"requests": [{"items": ["1"]}] * 5}, headers=h)
    assert r.status_code == 422 and "at most 4 per batch" in r.json()["detail"][0]["msg"]
    r = httpx.post(strict.url + "/recommend/batch", json={"requests": []}, headers=h)
    assert r.status_code == 422
    r = httpx.post(strict.url + "/recommend/batch", headers=h,
                   json={"requests": [{"items": ["1"]}, {"items": ["1", "ghost"]}, {"user_id": "phantom"}]})
    assert r.status_code == 422
    locs = {tuple(e["loc"]): e["msg"] for e in r.json()["detail"]}
    assert "'ghost'" in locs[("body", "requests", 1, "items")]
    assert "'phantom'" in locs[("body", "requests", 2, "user_id")]


def test_api_key_is_required_when_set(strict: LiveServer) -> None:
    body = {"items": ["1"], "k": 3}
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
        for method, path in (("POST", "/recommend"), ("GET", "/model"), ("GET", "/health"),
                             ("GET", "/openapi.json")):
            r = httpx.request(method, strict.url + path, json=body if method == "POST" else None, headers=headers)
            assert r.status_code == 401, (path, headers, r.text)
            assert "X-API-Key" in r.json()["detail"]
    ok = httpx.post(strict.url + "/recommend", json=body, headers={"X-API-Key": KEY})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 3


def test_oversized_bodies_get_413(strict: LiveServer) -> None:
    big = json.dumps({"items": ["1"] * 2000}).encode()  # > 4096 bytes
    r = httpx.post(strict.url + "/recommend", content=big,
                   headers={"X-API-Key": KEY, "content-type": "application/json"})
    assert r.status_code == 413 and "larger than 4096 bytes" in r.json()["detail"]
    # Chunked, no Content-Length: the bytes are counted as they arrive.
    port = int(strict.url.rsplit(":", 1)[1])
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (big[:3000], big[3000:6000])) + b"0\r\n\r\n"
    head = (f"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {KEY}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head + chunks)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    # Just under the limit still works.
    ok = httpx.post(strict.url + "/recommend", json={"items": ["1"] * 60}, headers={"X-API-Key": KEY})
    assert ok.status_code == 200


def test_not_ready_is_503_until_the_model_loads(experiment: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(experiment, broken)
    for which in ("best", "last"):
        (broken / "checkpoints" / f"{which}.pt").write_bytes(b"not a checkpoint")
    with live(create_app(broken), wait_ready=False) as srv:
        deadline = time.monotonic() + 30
        while (h := httpx.get(srv.url + "/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert h.status_code == 503 and h.json()["status"] == "failed" and h.json()["error"]
        r = httpx.post(srv.url + "/recommend", json={"items": ["1"]})
        assert r.status_code == 503 and "failed to load" in r.json()["detail"]
        assert httpx.get(srv.url + "/model").status_code == 503


# -- the command ---------------------------------------------------------------------------------

def mlconnect(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], capture_output=True, text=True,
                          env=kw.pop("env", ENV), timeout=120, **kw)


def one_error_line(cp: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert cp.returncode == code, (cp.returncode, cp.stdout, cp.stderr)
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and " — " in lines[0], cp.stderr
    assert text in lines[0], lines[0]


def test_cli_errors_are_one_line(experiment: Path, tmp_path: Path) -> None:
    one_error_line(mlconnect("serve", str(tmp_path / "nope"), "--host", "local"), 1, "no experiment")
    one_error_line(mlconnect("serve", str(experiment), "--host", "local", "--api-key-env", "NO_SUCH_VAR_X"),
                   2, "NO_SUCH_VAR_X")
    if not torch.cuda.is_available():
        one_error_line(mlconnect("serve", str(experiment), "--host", "local", "--device", "cuda"), 1, "CUDA")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        one_error_line(mlconnect("serve", str(experiment), "--host", "local", "--port", port), 1, "in use")
    broken = tmp_path / "broken"
    shutil.copytree(experiment, broken)
    for which in ("best", "last"):
        (broken / "checkpoints" / f"{which}.pt").write_bytes(b"\x80\x04not a checkpoint")
    cp = mlconnect("serve", str(broken), "--host", "local", "--port", str(free_port()))
    assert cp.returncode == 1 and "error: could not load broken" in cp.stderr, cp.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_cli_serves_then_shuts_down_gracefully(experiment: Path, rec: Recommender, sig: int) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlconnect", "serve", str(experiment), "--host", "local",
                             "--port", str(port), "--api-key-env", "SERVE_TEST_KEY"],
                            env={**ENV, "SERVE_TEST_KEY": KEY}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url, h = f"http://127.0.0.1:{port}", {"X-API-Key": KEY}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", headers=h).status_code == 200:
                    break
            time.sleep(0.1)
        r = httpx.post(url + "/recommend", json={"user_id": "7", "k": 4}, headers=h)
        assert_same_ranking(r.json()["items"], rec.recommend([rec.user_history("7")], k=4)[0])
        assert httpx.post(url + "/recommend", json={"user_id": "7"}).status_code == 401
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Application shutdown complete" in out and "Finished server process" in out, out
    assert "Traceback" not in out, out
    assert proc.returncode in (0, -sig, 128 + sig, 130), out  # uvicorn re-raises the signal once done


def test_host_side_of_remote_serving_takes_key_on_stdin_and_stops_at_eof(experiment: Path) -> None:
    """What `serve --host H` starts on the box: serving's entry point (not the CLI), the server described
    by a spec on stdin with the key in it (never argv), and closing stdin (the laptop's ssh went away)
    shuts the server down gracefully."""
    from mlconnect.serving.lifecycle import ServeSpec

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlconnect.serving.lifecycle"], env=ENV, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdin is not None
        proc.stdin.write(ServeSpec(experiment=str(experiment), port=port, api_key=KEY,
                                   limits={"max_batch": 8}).to_json() + "\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", headers={"X-API-Key": KEY}).status_code == 200:
                    break
            time.sleep(0.1)
        assert httpx.get(url + "/model").status_code == 401
        assert httpx.post(url + "/recommend", json={"user_id": "3"}, headers={"X-API-Key": KEY}).status_code == 200
        proc.stdin.close()
        proc.stdin = None  # communicate() must not touch the pipe we just closed
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "Application shutdown complete" in out and KEY not in out, out


@pytest.mark.parametrize(("line", "words"), [
    ("", "serve spec is not JSON"),
    ('{"experiment": "e", "port": 70000}', "serve spec: port is not a port number"),
    ('{"experiment": "e", "device": "tpu"}', "serve spec: device is not one of cpu, cuda, mps"),
    ('{"experiment": "e", "limits": {"max_batch": "8"}}', "serve spec: limits is not a map"),
    ('{"experiment": "e", "api_key_env": "K"}', "serve spec has unknown field(s): api_key_env"),
])
def test_host_side_of_remote_serving_refuses_a_bad_spec_in_one_line(line: str, words: str) -> None:
    cp = subprocess.run([sys.executable, "-m", "mlconnect.serving.lifecycle"], input=line + "\n", env=ENV,
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and cp.stdout == ""
    assert cp.stderr.startswith(f"error: {words}") and cp.stderr.count("\n") == 1, cp.stderr
