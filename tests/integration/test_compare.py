"""`mlconnect compare` on two real short trainings: best marked, PNG valid, --json equals results files."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from mlconnect.data.synth import generate

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MLCONNECT_HOST": "", "COLUMNS": "400"}


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_compare_two_real_runs(tmp_path: Path) -> None:
    generate(tmp_path / "data", "tiny", n_users=120, n_items=80, n_interactions=4000, seed=3)
    for name, hidden in (("a", "8"), ("b", "16")):
        cp = _cli(tmp_path, "train", "--data-path", str(tmp_path / "data"), "--dataset", "tiny",
                  "--experiment", name, "--set", "epochs=2", "--set", "train_batch_size=100",
                  "--set", f"hidden_size={hidden}", "--set", "inner_size=32", "--set", "num_threads=1",
                  "--set", "valid_metric=NDCG@10")
        assert cp.returncode == 0, cp.stderr
    png = tmp_path / "cmp.png"
    cp = _cli(tmp_path, "compare", "a", "b", "--plot", str(png), "--json")
    assert cp.returncode == 0, cp.stderr
    doc = json.loads(cp.stdout)
    res = {n: json.loads((tmp_path / "experiments" / n / "results" / "metrics.json").read_text()) for n in "ab"}
    for row in doc["rows"]:
        r = res[row["name"]]
        assert row["best_valid"] == r["best_valid"][r["valid_metric"]]
        assert row["test/ndcg@10"] == r["test"]["ndcg@10"] and row["wall_time_s"] == r["wall_time_s"]
        assert row["config"]["hidden_size"] in (8, 16)
    better = max("ab", key=lambda n: res[n]["best_valid"][res[n]["valid_metric"]])
    assert doc["best"]["best_valid"] == better
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    assert 600 <= w <= 2400 and 300 <= h <= 1200 and len(data) > 10_000
    table = _cli(tmp_path, "compare", "a", "b").stdout
    line = next(ln for ln in table.splitlines() if ln.strip("│ ").startswith(better + " "))
    assert "*" in line
    from mlconnect import compare as cmp

    fig = cmp.figure([cmp.load_run(n, tmp_path) for n in "ab"])  # 2 epochs: ticks 1, 2, not 1.0, 1.2, ...
    ticks = [t for t in fig.axes[0].get_xticks() if fig.axes[0].get_xlim()[0] <= t <= fig.axes[0].get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
    bad = _cli(tmp_path, "compare", "a", "nope")
    assert bad.returncode == 1 and "unknown experiment 'nope'" in bad.stderr
    blocked = _cli(tmp_path, "compare", "a", "b", "--plot", str(png / "under-a-file.png"))  # png is a file
    assert blocked.returncode == 1 and blocked.stderr.startswith("error: cannot write "), blocked.stderr
    assert "Traceback" not in blocked.stderr and png.read_bytes() == data
    (tmp_path / "experiments" / "b" / "config.yaml").write_text("hidden_size: [16\n")  # half-copied
    broken = _cli(tmp_path, "compare", "a", "b")
    assert broken.returncode == 1 and "not valid YAML (line 2" in broken.stderr
    assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr  # it was five lines of PyYAML
