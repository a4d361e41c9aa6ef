"""``mlconnect data ...`` through the installed console script, as a person runs it."""

from __future__ import annotations

import functools
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from support.grouplens import write_raw_ml100k

REPO = Path(__file__).resolve().parents[2]
MLCONNECT = Path(sys.executable).parent / "mlconnect"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = [str(MLCONNECT)] if MLCONNECT.exists() else [sys.executable, "-m", "mlconnect"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLCONNECT_DEBUG", "MLCONNECT_MOVIELENS_URL")}
    env["COLUMNS"] = "200"
    return subprocess.run([*exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_synth_writes_and_reports(tmp_path):
    proc = _run("data", "synth", "--out", "data", "--name", "toy", "--users", "200", "--items", "100",
                "--interactions", "5000", "--seed", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "data" / "toy"
    assert f"wrote {Path('data') / 'toy'}" in proc.stdout
    assert "200 users, 100 items, 5,000 interactions" in proc.stdout
    lines = (folder / "toy.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float" and len(lines) == 5001

    again = _run("data", "synth", "--out", "data", "--name", "toy", cwd=tmp_path)
    assert again.returncode == 1
    assert "already exists" in _error_line(again)
    assert len((folder / "toy.inter").read_text().splitlines()) == 5001  # untouched

    forced = _run("data", "synth", "--out", "data", "--name", "toy", "--users", "200", "--items", "100",
                  "--interactions", "5000", "--seed", "3", "--force", "--json", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    info = json.loads(forced.stdout)
    assert info["users"] == 200 and info["items"] == 100 and info["interactions"] == 5000
    assert info["dataset"] == "toy" and info["files"] == ["toy.inter", "toy.item"]
    assert (folder / "toy.inter").read_text().splitlines() == lines  # same seed, same bytes


def test_synth_bad_numbers(tmp_path):
    proc = _run("data", "synth", "--out", "data", "--users", "100", "--interactions", "10", cwd=tmp_path)
    assert proc.returncode != 0
    assert "at least 5 per user" in _error_line(proc)
    assert not (tmp_path / "data" / "synthetic").exists()


def test_import_movielens(tmp_path):
    raw = write_raw_ml100k(tmp_path / "downloads" / "ml-100k", n_ratings=2000)
    proc = _run("data", "import-movielens", str(raw), "--out", str(tmp_path / "data"), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["path"] == str(tmp_path / "data" / "ml-100k")
    assert info["interactions"] == 2000 and info["files"] == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert info["users"] == len({line.split("\t")[0] for line in (raw / "u.data").read_text().splitlines()})

    proc = _run("data", "import-movielens", str(raw / "u.data"), "--out", "data", "--name", "mine",
                cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2,000 interactions" in proc.stdout and (tmp_path / "data" / "mine" / "mine.inter").is_file()


def test_import_bad_path_and_bad_line(tmp_path):
    proc = _run("data", "import-movielens", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "does not exist" in _error_line(proc)

    bad = tmp_path / "ml-100k"
    bad.mkdir()
    (bad / "u.data").write_text("1\t2\t3\t4\n1\t2\n")
    proc = _run("data", "import-movielens", str(bad), "--out", "data", cwd=tmp_path)
    assert proc.returncode == 1
    line = _error_line(proc)
    assert "u.data, line 2" in line and "expected 4 fields" in line
    assert not (tmp_path / "data").exists() or list((tmp_path / "data").iterdir()) == []


@pytest.mark.parametrize("cmd", [["data", "--help"], ["data", "synth", "--help"]])
def test_help(cmd, tmp_path):
    proc = _run(*cmd, cwd=tmp_path)
    assert proc.returncode == 0 and "Usage:" in proc.stdout


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_fetch_movielens_from_local_server(tmp_path):
    raw = write_raw_ml100k(tmp_path / "src" / "ml-100k", n_ratings=500)
    www = tmp_path / "www"
    www.mkdir()
    with zipfile.ZipFile(www / "ml-100k.zip", "w") as zf:
        for p in raw.iterdir():
            zf.write(p, f"ml-100k/{p.name}")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/ml-100k.zip"
        proc = _run("data", "fetch-movielens", "--url", url, "--out", "data", "--json", cwd=tmp_path)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["dataset"] == "ml-100k" and info["interactions"] == 500

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _run("data", "fetch-movielens", "--url", f"http://127.0.0.1:{port}/x.zip", "--out", "other",
                "--timeout", "5", cwd=tmp_path)
    assert proc.returncode == 1
    line = _error_line(proc)
    assert "could not download ml-100k" in line and "mlconnect data import-movielens" in line
    assert not (tmp_path / "other" / "ml-100k").exists()
