"""`mlconnect export --docker` without docker: the image's command, run as the Dockerfile runs it.

A fresh venv gets exactly the bundle's requirements.txt plus the bundle's mlconnect wheel without its
dependencies (as the Dockerfile's RUN line does), so torch is not there at all. The Dockerfile's CMD
then runs through ``sh -c`` in the bundle folder (its WORKDIR) with ENV's HOST/PORT replaced by a
loopback port, and the API must answer exactly as the engine does.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlconnect.engine.inference import Recommender
from support import deploy
from support.sshd import free_port

KEY = "docker-key-0123456789"


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "deploy"  # shared with test_deploy.py
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def docker_bundle(base: Path) -> Path:
    return deploy.bundle(base, "GRU4Rec", docker=True)


def parse_dockerfile(path: Path) -> dict[str, list[str]]:
    """Instruction -> its argument strings, in order (continuation lines joined, comments dropped)."""
    out: dict[str, list[str]] = {}
    text = re.sub(r"\\\n", " ", path.read_text())
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_dockerfile_is_slim_non_root_healthchecked_and_serves_the_bundle(docker_bundle: Path) -> None:
    d = parse_dockerfile(docker_bundle / "Dockerfile")
    assert len(d["FROM"]) == 1 and re.fullmatch(r"python:3\.\d+-slim", d["FROM"][0])
    assert d["USER"] == ["mlconnect"] and any("useradd" in r and "mlconnect" in r for r in d["RUN"])
    assert d["WORKDIR"][-1] == "/bundle" and "COPY" in d and any(c.endswith("/bundle") for c in d["COPY"])
    env = dict(kv.split("=", 1) for kv in shlex.split(" ".join(d["ENV"])))
    assert env["HOST"] == "0.0.0.0" and env["PORT"] == "8000"
    assert len(d["HEALTHCHECK"]) == 1 and "/health" in d["HEALTHCHECK"][0] and "X-API-Key" in d["HEALTHCHECK"][0]
    cmd = shlex.split(d["CMD"][0])
    assert cmd[:4] == ["exec", "python", "-m", "mlconnect.deploy.server"]
    assert cmd[cmd.index("--bundle") + 1] == "." and cmd[cmd.index("--bind") + 1] == "$HOST"
    assert cmd[cmd.index("--port") + 1] == "$PORT"
    install = " ".join(d["RUN"])
    wheel = next(docker_bundle.glob("mlconnect-*.whl")).name
    assert "-r requirements.txt" in install and f"--no-deps ./{wheel}" in install
    reqs = [ln for ln in (docker_bundle / "requirements.txt").read_text().splitlines() if not ln.startswith("#")]
    assert all(re.fullmatch(r"[a-z0-9-]+==[\w.+-]+", ln) for ln in reqs)
    names = {ln.split("==")[0] for ln in reqs}
    assert {"onnxruntime", "numpy", "fastapi", "uvicorn"} <= names and "torch" not in names


@pytest.fixture(scope="session")
def slim_venv(tmp_path_factory: pytest.TempPathFactory, docker_bundle: Path) -> Path:
    """What the image's RUN line installs, in a venv of its own: the requirements and the wheel, no torch.
    pip runs from the test's own environment (``--python``), so the venv needs no pip of its own."""
    venv = tmp_path_factory.mktemp("slim") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    # --no-compile: byte-compiling numpy, onnxruntime and pydantic is most of the install time here.
    pip = [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--disable-pip-version-check", "--no-compile"]
    for args in (["-r", "requirements.txt"], ["--no-deps", next(docker_bundle.glob("mlconnect-*.whl")).name]):
        cp = subprocess.run([*pip, *args], cwd=docker_bundle, capture_output=True, text=True, timeout=600)
        assert cp.returncode == 0, cp.stderr[-2000:]
    return venv


@pytest.fixture()
def container(slim_venv: Path, docker_bundle: Path) -> Iterator[str]:
    """The Dockerfile's CMD under ``sh -c`` in the bundle folder, HOST/PORT set as ``docker run -e`` would."""
    cmd = parse_dockerfile(docker_bundle / "Dockerfile")["CMD"][0]
    port = free_port()
    env = {"PATH": f"{slim_venv / 'bin'}:/usr/bin:/bin", "HOST": "127.0.0.1", "PORT": str(port),
           "MLCONNECT_API_KEY": KEY, "OMP_NUM_THREADS": "1", "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=docker_bundle, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the bundle server did not become healthy in 60 s"
            try:
                if httpx.get(url + "/health", headers={"X-API-Key": KEY}, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()  # `exec` in CMD: the shell became the server, which gets SIGTERM as `docker stop` sends
        out, _ = proc.communicate(timeout=30)
        assert "Application shutdown complete" in out, out


def test_slim_venv_has_no_torch(slim_venv: Path) -> None:
    cp = subprocess.run([str(slim_venv / "bin" / "python"), "-c", "import torch"], capture_output=True, text=True)
    assert cp.returncode != 0 and "No module named 'torch'" in cp.stderr


def test_image_command_answers_like_the_engine(container: str, base: Path) -> None:
    h = {"X-API-Key": KEY}
    rec = Recommender.load(deploy.trained(base, "GRU4Rec"))
    for user in ("2", "99", "250"):
        got = httpx.post(container + "/recommend", json={"user_id": user, "k": 10}, headers=h).json()
        want = rec.recommend([rec.user_history(user)], k=10)[0]
        assert [i["item_id"] for i in got["items"]] == [i for i, _ in want]
        assert all(abs(i["score"] - s) <= 1e-4 for i, (_, s) in zip(got["items"], want))
    seq = rec.user_history("7")[:5]
    batch = httpx.post(container + "/recommend/batch", headers=h,
                       json={"requests": [{"items": seq, "k": 5, "exclude_seen": False}, {"user_id": "7", "k": 3}]})
    assert batch.status_code == 200
    assert [i["item_id"] for i in batch.json()["results"][0]["items"]] == \
        [i for i, _ in rec.recommend([seq], k=5, exclude_seen=False)[0]]

    unknown = httpx.post(container + "/recommend", json={"items": [seq[0], "no-such-item"]}, headers=h)
    assert unknown.status_code == 422 and "no-such-item" in unknown.text
    assert httpx.post(container + "/recommend", json={"user_id": "nobody"}, headers=h).status_code == 422
    big = httpx.post(container + "/recommend", content=b'{"items": [' + b'"1",' * 400_000 + b'"1"]}',
                     headers={**h, "content-type": "application/json"})
    assert big.status_code == 413
    assert httpx.post(container + "/recommend", json={"user_id": "2"}).status_code == 401
    assert httpx.get(container + "/health").status_code == 401
    assert httpx.get(container + "/model", headers=h).json()["bundle"]["runtime"].startswith("onnxruntime")
