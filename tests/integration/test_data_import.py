"""``data import``: real files in every format, written by pyarrow itself, then imported and loaded."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from mlconnect.data.importer import import_events
from mlconnect.data.movielens import import_movielens
from mlconnect.engine.config import load_config
from mlconnect.engine.data import load_dataset
from mlconnect.errors import DataError

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def events(n_users: int = 30, per_user: int = 8, seed: int = 0) -> pa.Table:
    """String user ids, item ids, an event type and a UTC datetime, in shuffled (not time) order."""
    rng = np.random.default_rng(seed)
    users = np.repeat([f"u{i:03d}" for i in range(n_users)], per_user)
    items = [f"sku-{int(x)}" for x in rng.integers(0, 40, len(users))]
    secs = rng.permutation(len(users)) * 3600
    kinds = np.where(rng.random(len(users)) < 0.8, "view", "purchase")
    return pa.table({"customer_id": users, "product_id": items, "event_type": kinds,
                     "event_time": pa.array([T0 + timedelta(seconds=int(s)) for s in secs], pa.timestamp("us", "UTC"))})


def sequences(out: Path) -> dict[str, list[str]]:
    ds = load_dataset(load_config(None, {"data_path": str(out.parent), "dataset": out.name}))
    return {ds.user_ids[u]: [ds.item_ids[i] for i in ds.sequences[u]] for u in range(1, ds.n_users + 1)}


def write_formats(table: pa.Table, d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    files = {"csv": d / "ev.csv", "gz": d / "ev.csv.gz", "zst": d / "ev.csv.zst", "parquet": d / "ev.parquet",
             "jsonl": d / "ev.jsonl", "parts": d / "parts"}
    as_text = table.set_column(3, "event_time", pa.array(
        [t.isoformat().replace("+00:00", "Z") for t in table.column("event_time").to_pylist()]))
    pacsv.write_csv(as_text, files["csv"])
    for key, codec in (("gz", "gzip"), ("zst", "zstd")):
        with pa.CompressedOutputStream(str(files[key]), codec) as out:
            pacsv.write_csv(as_text, out)
    pq.write_table(table, files["parquet"])
    files["parts"].mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), files["parts"] / "part-0.parquet")
    pq.write_table(table.slice(half), files["parts"] / "part-1.parquet")
    files["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in as_text.to_pylist()))
    return files


def test_every_format_gives_the_same_dataset(tmp_path: Path) -> None:
    table = events()
    files = write_formats(table, tmp_path / "src")
    results = {}
    for kind, path in files.items():
        out, card = import_events(path, tmp_path / "data", f"ev-{kind}", where=['event_type == "view"'],
                                  keep=["event_type"])
        assert card["columns"]["user"] == "customer_id" and card["columns"]["time"] == "event_time", kind
        assert card["dropped"] == {"--where event_type == 'view'": int((np.array(
            table.column("event_type").to_pylist()) != "view").sum())}
        results[kind] = sequences(out)
    first = results["csv"]
    assert all(r == first for r in results.values())
    # time order, not file order: rebuild the expectation from the table itself
    rows = sorted((r for r in table.to_pylist() if r["event_type"] == "view"),
                  key=lambda r: (r["customer_id"], r["event_time"]))
    want: dict[str, list[str]] = {}
    for r in rows:
        want.setdefault(r["customer_id"], []).append(r["product_id"])
    assert first == want
    card = json.loads((tmp_path / "data" / "ev-parquet" / "card.json").read_text())
    assert card["time_span"]["first"].startswith("2024-01-01") and card["users"] == 30
    assert "event_type:token" in (tmp_path / "data" / "ev-csv" / "ev-csv.inter").read_text().splitlines()[0]


def test_ml100k_import_equals_import_movielens(datasets_dir: Path, tmp_path: Path) -> None:
    shared = datasets_dir / "ml-100k"
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "u.data").write_text("".join(line + "\n" for line in (shared / "ml-100k.inter").read_text()
                                        .splitlines()[1:]))
    ml = import_movielens(raw / "u.data", tmp_path / "ml", "ml-100k")
    ours, card = import_events(raw / "u.data", tmp_path / "ours", "ml-100k", user="0", item="1", time="3",
                               keep=["2=rating"])
    # The same rows; data import writes each user's rows in time order (u.data is not), so compare as sets.
    mine, theirs = ((d / "ml-100k.inter").read_text().splitlines() for d in (ours, ml))
    assert mine[0] == theirs[0] and sorted(mine[1:]) == sorted(theirs[1:])
    assert card["rows_kept"] == 100_000 and card["users"] == 943 and card["items"] == 1682
    plain, _ = import_events(raw / "u.data", tmp_path / "plain", "ml-100k", user="0", item="1", time="3")
    # Each user's rows by exact time, ties in file order (the engine's float32 key alone cannot
    # tell apart ratings a second or two apart, so import-movielens' file order differs for some users).
    want: dict[str, list[tuple[int, str]]] = {}
    for line in (raw / "u.data").read_text().splitlines():
        u, i, _, t = line.split("\t")
        want.setdefault(u, []).append((int(t), i))
    got = sequences(plain)
    assert got == {u: [i for _, i in sorted(v, key=lambda r: r[0])] for u, v in want.items()}
    assert {u: sorted(v) for u, v in got.items()} == {u: sorted(v) for u, v in sequences(ml).items()}


def test_crlf_bom_headerless_and_no_time(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbfuserId,movieId,ts\r\n1,10,5\r\n1,11,3\r\n2,10,1\r\n\r\n2,12,2\r\n")
    out, card = import_events(tmp_path / "a.csv", tmp_path / "d", "a")
    assert card["columns"] == {"user": "userId", "item": "movieId", "time": "ts"}
    assert sequences(out) == {"1": ["11", "10"], "2": ["10", "12"]}
    (tmp_path / "b.tsv").write_text("7\tx\n7\ty\n8\tx\n")
    out, card = import_events(tmp_path / "b.tsv", tmp_path / "d", "b", user="0", item="1")
    assert "row order" in card["time_order"] and sequences(out) == {"7": ["x", "y"], "8": ["x"]}
    assert (out / "b.inter").read_text().splitlines()[0] == "user_id:token\titem_id:token"


def test_units_dedup_kcore_and_suggested_config(tmp_path: Path) -> None:
    ms = 1_700_000_000_000
    lines = ["user,item,ts"] + [f"u{u},i{i},{ms + 1000 * (u * 10 + i)}" for u in range(4) for i in range(5)]
    lines += ["u0,i0,1700000000000", "u9,i0,1700000000000"]  # a duplicate; a user with one event
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    out, card = import_events(tmp_path / "e.csv", tmp_path / "d", "e", min_user_inter=2, min_item_inter=2)
    assert "ms" in card["time_order"]
    assert card["dropped"] == {"duplicate (user, item, time)": 1, "k-core (users >= 2, items >= 2)": 1}
    assert (out / "e.inter").read_text().splitlines()[1] == "u0\ti0\t1700000000"
    cfg = load_config(out / "suggested.yaml")
    assert cfg["user_inter_num_interval"] == "[2,inf)" and load_dataset(cfg).n_users == 4


def _error(tmp_path: Path, name: str, body: bytes, **kw: object) -> str:
    (tmp_path / name).write_bytes(body)
    with pytest.raises(DataError) as err:
        import_events(tmp_path / name, tmp_path / "out", "x", **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "out" / "x").exists()
    assert not list((tmp_path / "out").glob(".x.*"))  # no staging leftovers
    return str(err.value)


def test_bad_inputs_name_file_row_and_column(tmp_path: Path) -> None:
    msg = _error(tmp_path, "m.csv", b"who,what\n1,2\n")
    assert "no user id column" in msg and "who, what" in msg
    msg = _error(tmp_path, "t.csv", b"user_id,item_id,timestamp\n1,2,2024-01-01\n1,3,2024-01-02\n1,4,1704067200\n")
    assert "t.csv, line 4, column 'timestamp'" in msg and "mixed time formats" in msg
    msg = _error(tmp_path, "z.csv", b"user_id,item_id,timestamp\n1,2,2024-01-01T00:00:00Z\n1,3,2024-01-02\n")
    assert "line 3" in msg and "no time zone" in msg
    msg = _error(tmp_path, "b.csv", b"user_id,item_id,timestamp\n1,2,2024-01-01\n1,3,yesterday\n")
    assert "b.csv, line 3, column 'timestamp'" in msg and "yesterday" in msg
    msg = _error(tmp_path, "n.csv", b"user_id,item_id,timestamp\n,2,5\n,3,6\n")
    assert "column 'user_id'" in msg and "empty in every row" in msg
    msg = _error(tmp_path, "e.csv", b"")
    assert "empty" in msg
    whole = gzip.compress(b"user_id,item_id,timestamp\n" + b"".join(b"%d,%d,%d\n" % (i, i, i) for i in range(50000)))
    msg = _error(tmp_path, "c.csv.gz", whole[: len(whole) // 2])
    assert "c.csv.gz" in msg and "truncated" in msg
    pq.write_table(pa.table({"user_id": ["a", "b"], "item_id": ["x", "y"], "ts": ["2024-01-01", "soon"]}),
                   tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"p.parquet, row 2, column 'ts'"):
        import_events(tmp_path / "p.parquet", tmp_path / "out", "p")


def test_null_ids_are_counted_not_silently_dropped(tmp_path: Path) -> None:
    (tmp_path / "n.csv").write_text("user_id,item_id,timestamp\n1,2,5\n,3,6\n1,,7\n1,4,\n2,5,1\n")
    _, card = import_events(tmp_path / "n.csv", tmp_path / "d", "n")
    assert card["rows_read"] == 5 and card["rows_kept"] == 2
    assert card["dropped"] == {"no user id": 1, "no item id": 1, "no time": 1}


def test_cli_prints_card_and_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "ev.csv").write_text("customer_id,sku,created_at\nc1,a,1\nc1,b,2\nc2,a,3\n")
    (tmp_path / "items.csv").write_text("sku,title,price\na,\"Apple, red\",1.5\nb,Bread,2\n")
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MLCONNECT_DEBUG", None)
    cmd = [sys.executable, "-m", "mlconnect", "data", "import", "ev.csv", "--out", "data", "--items", "items.csv"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "rows read" in proc.stdout and "sequence length" in proc.stdout and "sku" in proc.stdout
    item = (tmp_path / "data" / "ev" / "ev.item").read_text().splitlines()
    assert item == ["item_id:token\ttitle:token\tprice:float", "a\tApple, red\t1.5", "b\tBread\t2"]
    (tmp_path / "bad.csv").write_text("customer_id,sku,created_at\nc1,a,1\nc1,b,later\n")
    proc = subprocess.run([*cmd[:5], "bad.csv", "--out", "data"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert "bad.csv, line 3, column 'created_at'" in lines[0]
    assert not (tmp_path / "data" / "bad").exists()
