"""predict --out that cannot be written: one line, before any scoring, and nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import deploy

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "deploy"  # shared with test_deploy.py: its bundles are reused
    path.mkdir(exist_ok=True)
    return path


@pytest.mark.parametrize("where,needle", [
    ("folder", "is a folder"),           # an existing folder named like the output
    ("under-file", "cannot write there"),  # a path whose parent is a regular file
])
def test_unwritable_out_is_one_line_and_leaves_nothing(base: Path, tmp_path: Path, where: str, needle: str) -> None:
    bundle = deploy.bundle(base, "SASRec")
    if where == "folder":
        out = tmp_path / "recs.parquet"
        out.mkdir()
    else:
        (tmp_path / "notes.txt").write_text("mine")
        out = tmp_path / "notes.txt" / "recs.parquet"
    r = subprocess.run([sys.executable, "-m", "mlconnect", "predict", "--bundle", str(bundle), "--out", str(out)],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode != 0
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == (["recs.parquet"] if where == "folder" else ["notes.txt"])
    if where == "under-file":
        assert (tmp_path / "notes.txt").read_text() == "mine"
