"""``data import`` on the files a review found mishandled: each test writes the real file and imports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mlconnect.data.importer import import_events
from mlconnect.errors import MlconnectError


def inter(folder: Path) -> list[list[str]]:
    return [line.split("\t") for line in (folder / f"{folder.name}.inter").read_text().splitlines()]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlconnect", "data", "import", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_newest_first_log_is_written_in_time_order(tmp_path: Path) -> None:
    # Clicks one second apart on a year-long span: the engine's float32 time key ties them.
    rows = []
    for u in range(40):
        start = 1420070400 + u * 800_000
        rows += [(f"u{u}", f"i{u}_{k}", start + k) for k in range(6)]
    rows.sort(key=lambda r: -r[2])
    (tmp_path / "desc.csv").write_text("user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows))
    out, card = import_events(tmp_path / "desc.csv", tmp_path / "d", "desc")
    per_user: dict[str, list[tuple[str, int]]] = {}
    for u, i, t in inter(out)[1:]:
        per_user.setdefault(u, []).append((i, int(t)))
    assert all([i for i, _ in v] == [f"i{u[1:]}_{k}" for k in range(6)] for u, v in per_user.items())
    assert "out of time order" in card["time_order"]
    # Equal times keep their file order; a file already in order is written unchanged.
    (tmp_path / "ties.csv").write_text("user_id,item_id,timestamp\nu1,b,5\nu2,x,1\nu1,a,5\nu1,c,4\n")
    out, _ = import_events(tmp_path / "ties.csv", tmp_path / "d", "ties")
    assert [r[:2] for r in inter(out)[1:]] == [["u1", "c"], ["u2", "x"], ["u1", "b"], ["u1", "a"]]
    (tmp_path / "asc.csv").write_text("user_id,item_id,timestamp\nu1,b,1\nu2,x,1\nu1,a,5\n")
    out, card = import_events(tmp_path / "asc.csv", tmp_path / "d", "asc")
    assert [r[1] for r in inter(out)[1:]] == ["b", "x", "a"] and "out of time order" not in card["time_order"]


def test_missing_ids_are_the_same_in_every_format(tmp_path: Path) -> None:
    users = ["u1", "u1", "u1", "", "", "", "NA", "NA", "NA", "u2", "u2", "u2", "  ", None]
    items = ["a", "b", "c", "a", "b", "c", "d", "e", "f", "a", " ", "c", "a", "b"]
    table = pa.table({"user_id": users, "item_id": items, "timestamp": list(range(100, 114))})
    pq.write_table(table, tmp_path / "b.parquet")
    pacsv.write_csv(table, tmp_path / "b.csv")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    got = {}
    for ext in ("csv", "parquet", "jsonl"):
        out, card = import_events(tmp_path / f"b.{ext}", tmp_path / "d", ext)
        got[ext] = (inter(out), card["dropped"])
    assert got["parquet"] == got["csv"] == got["jsonl"]
    rows, dropped = got["csv"]
    assert {r[0] for r in rows[1:]} == {"u1", "u2"} and len(rows) == 1 + 5
    assert dropped["no user id"] == 8 and dropped["no item id"] == 1


def test_keep_names_that_collide_are_refused(tmp_path: Path) -> None:
    (tmp_path / "k.csv").write_text("user_id,item_id,timestamp,price,cost\nu1,a,1,2,3\nu1,b,2,4,5\n")
    for keep in (["timestamp=item_id"], ["timestamp"], ["price=p", "cost=p"], ["price=user_id"]):
        with pytest.raises(MlconnectError, match="already has a field"):
            import_events(tmp_path / "k.csv", tmp_path / "d", "k", keep=keep)
    r = cli(tmp_path / "k.csv", "--keep", "timestamp", "-o", tmp_path / "d", "--name", "k")
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "error: --keep timestamp" in r.stderr
    out, _ = import_events(tmp_path / "k.csv", tmp_path / "d", "k", keep=["price", "cost=timestamp2"])
    assert inter(out)[0] == ["user_id:token", "item_id:token", "timestamp:float", "price:float", "timestamp2:float"]
