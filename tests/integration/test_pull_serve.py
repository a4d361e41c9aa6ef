"""Issue 10, failure 3: a run pulled with the default ``pull`` can be served on the laptop.

A real training on the "host" (this machine behind the session's loopback OpenSSH server), a real
``mlconnect pull`` (rsync over ssh), then a real ``mlconnect serve`` (uvicorn) on the laptop copy.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import httpx
import pytest
from runs_support import cli_env, mlc, wait_for, write_tiny_dataset

from support.cli import ForegroundCli
from support.cli import cli_env as fg_env
from support.sshd import SshdHost, free_port

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]


def _ready(c: httpx.Client) -> bool:
    try:
        return c.get("/health").status_code == 200
    except httpx.TransportError:  # not listening yet
        return False


def test_default_pull_brings_what_serving_needs(sshd_host: SshdHost, tmp_path: Path) -> None:
    from mlconnect.engine.config import load_config
    from mlconnect.engine.trainer import train

    laptop, remote = tmp_path / "laptop", tmp_path / "remote_root"
    laptop.mkdir()
    data = write_tiny_dataset(tmp_path / "data")
    (data / "tiny" / "tiny.item").write_text(
        "item_id:token\ttitle:token_seq\n" + "".join(f"i{i}\tTitle {i}\n" for i in range(20)))
    cfg = load_config(REPO / "configs" / "baseline.yaml",
                      {"data_path": str(data), "dataset": "tiny", "epochs": 1, "hidden_size": 16,
                       "inner_size": 32, "n_layers": 1, "num_threads": 1, "seed": 3,
                       "train_batch_size": 256})
    train(cfg, remote / "experiments" / "p1")
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd_host.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    host = ["--host", sshd_host.alias, "--ssh-config", str(sshd_host.ssh_config)]

    out = mlc(["pull", "p1", *host], laptop, cli_env(tmp_path)).stdout
    assert "pulled p1" in out
    ck = laptop / "experiments" / "p1" / "checkpoints"
    assert {"best.pt", "vocab.json", "histories.npz", "items.json"} <= {p.name for p in ck.iterdir()}
    assert not (ck / "last.pt").exists()  # the default still leaves the resume checkpoint behind

    port = free_port()
    srv = ForegroundCli(["serve", "p1", "--port", str(port), "--host", "local"], laptop, fg_env())
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False) as c:
            wait_for(lambda: _ready(c), timeout=90, what="the server to be ready")
            r = c.post("/recommend", json={"user_id": "u3", "k": 5})
            assert r.status_code == 200, r.text
            assert len(r.json()["items"]) == 5
            r = c.post("/recommend", params={"details": "true"}, json={"items": ["i1", "i2"], "k": 3})
            assert r.status_code == 200, r.text
            assert all(s["metadata"]["title"] for s in r.json()["items"]), r.json()
    finally:
        srv.stop(signal.SIGINT)
