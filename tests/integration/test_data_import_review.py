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


def test_csv_with_quoted_newlines_past_the_first_block(tmp_path: Path) -> None:
    # Over Arrow's 8 MB block: its fast chunker would cut inside a quoted review.
    # Most line breaks are inside quotes, so the block boundary surely falls inside a value.
    text = '"great\nproduct, would buy' + "\nreally" * 12 + '"'
    body = "".join(f"u{k % 500},i{k % 170},{1600000000 + k},{text if k % 3 else 'ok'}\n" for k in range(100_000))
    (tmp_path / "reviews.csv").write_text("user_id,item_id,timestamp,text\n" + body)
    assert (tmp_path / "reviews.csv").stat().st_size > 9 << 20
    out, card = import_events(tmp_path / "reviews.csv", tmp_path / "d", "r", keep=["text"])
    assert card["rows_kept"] == 100_000 and inter(out)[2][3].startswith("great product, would buy really")
    # A real short row is still named by its line.
    (tmp_path / "short.csv").write_text('user_id,item_id,timestamp\n1,"a\nb",1\n1,a\n')
    r = cli(tmp_path / "short.csv", "-o", tmp_path / "d")
    assert r.returncode == 1 and "line 4: expected 3 columns, found 2" in r.stderr


def test_parquet_parts_in_natural_order_with_differing_id_types(tmp_path: Path) -> None:
    (tmp_path / "dask").mkdir()
    for p in range(12):
        pq.write_table(pa.table({"session_id": ["s1", "s1"], "item_id": [f"p{p}_0", f"p{p}_1"]}),
                       tmp_path / "dask" / f"part.{p}.parquet")
    out, _ = import_events(tmp_path / "dask", tmp_path / "d", "dask")
    assert [r[1] for r in inter(out)[1:]] == [f"p{p}_{k}" for p in range(12) for k in range(2)]
    (tmp_path / "parts").mkdir()
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": [10, 11], "timestamp": [100, 200]}),
                   tmp_path / "parts" / "part-0.parquet")
    pq.write_table(pa.table({"user_id": ["3", "4"], "item_id": ["B1", "B2"], "timestamp": [300, 400]}),
                   tmp_path / "parts" / "part-1.parquet")
    out, _ = import_events(tmp_path / "parts", tmp_path / "d", "parts")
    assert [r[:2] for r in inter(out)[1:]] == [["1", "10"], ["2", "11"], ["3", "B1"], ["4", "B2"]]


def test_jsonl_with_a_long_first_record_and_only_needed_fields(tmp_path: Path) -> None:
    with open(tmp_path / "long.jsonl", "w") as f:
        for k in range(10):  # a 70 KB review in each record; 'style' changes shape (never read)
            style = {"size": "L"} if k % 2 else ["L"]
            f.write(json.dumps({"user_id": f"u{k % 3}", "item_id": f"i{k}", "timestamp": 1600000000 + k,
                                "reviewText": "x" * 70_000, "style": style}) + "\n")
    out, card = import_events(tmp_path / "long.jsonl", tmp_path / "d", "long")
    assert card["rows_kept"] == 10 and len(inter(out)) == 11
    (tmp_path / "arr.json").write_text('[{"user_id": "u1", "item_id": "a"}]\n')
    with pytest.raises(MlconnectError, match="a JSON array, not JSON Lines"):
        import_events(tmp_path / "arr.json", tmp_path / "d", "arr")


def test_repeated_header_name_picked_by_position(tmp_path: Path) -> None:
    (tmp_path / "dup.csv").write_text("user_id,item_id,item_id,timestamp\n1,a,b,100\n2,c,d,200\n")
    out, card = import_events(tmp_path / "dup.csv", tmp_path / "d", "dup", item="2")
    assert [r[1] for r in inter(out)[1:]] == ["b", "d"] and card["columns"]["item"] == "item_id.1"
    out, _ = import_events(tmp_path / "dup.csv", tmp_path / "d", "dup", item="item_id", overwrite=True)
    assert [r[1] for r in inter(out)[1:]] == ["a", "c"]


def test_time_zone_words_category_times_and_time_format(tmp_path: Path) -> None:
    (tmp_path / "rees.csv").write_text("user_id,item_id,event_time\n1,2,2019-10-01 00:00:00 UTC\n"
                                       "1,3,2019-10-01 00:00:05 +01:00\n")
    out, _ = import_events(tmp_path / "rees.csv", tmp_path / "d", "rees")
    assert sorted(r[2] for r in inter(out)[1:]) == ["1569884405", "1569888000"]
    times = pa.array(["2017-07-14T03:46:02+00:00", "2017-07-15T03:46:02+00:00"]).dictionary_encode()
    pq.write_table(pa.table({"user_id": ["1", "1"], "item_id": ["a", "b"], "timestamp": times}), tmp_path / "c.parquet")
    out, _ = import_events(tmp_path / "c.parquet", tmp_path / "d", "c")
    assert [r[2] for r in inter(out)[1:]] == ["1500003962", "1500090362"]
    (tmp_path / "f.csv").write_text("user_id,item_id,t\n1,2,2019/10/01 00:00:00\n1,3,2019/10/01 00:00:07\n")
    out, card = import_events(tmp_path / "f.csv", tmp_path / "d", "f", time="t", time_format="%Y/%m/%d %H:%M:%S")
    assert [r[2] for r in inter(out)[1:]] == ["1569888000", "1569888007"] and "--time-format" in card["time_order"]
    (tmp_path / "f.csv").write_text("user_id,item_id,t\n1,2,2019/10/01 00:00:00\n1,3,01/10/2019 00:00\n")
    r = cli(tmp_path / "f.csv", "--time", "t", "--time-format", "%Y/%m/%d %H:%M:%S", "-o", tmp_path / "d")
    assert r.returncode == 1 and "line 3, column 't': not a time in --time-format" in r.stderr
    (tmp_path / "z.csv").write_text("user_id,item_id,timestamp\n1,a,1433221332117\n1,b,0\n")
    r = cli(tmp_path / "z.csv", "-o", tmp_path / "d")
    assert r.returncode == 1 and "(value 0.0)" in r.stderr and "np." not in r.stderr


def test_header_detection_and_override(tmp_path: Path) -> None:
    # Last.fm 1K: no header; a track named "1979" on line 2 must not turn line 1 into one.
    (tmp_path / "lfm.tsv").write_text("user_000001\t2009-05-04T23:08:57Z\tf1b1\tDeep Dish\t\tFuck Me\n"
                                      "user_000001\t2009-05-04T13:54:10Z\ta7f7\tSakamoto\t\t1979\n"
                                      "user_000002\t2009-05-04T13:42:52Z\ta7f7\tSakamoto\t\tX\n")
    _, card = import_events(tmp_path / "lfm.tsv", tmp_path / "d", "lfm", user="0", item="2", time="1")
    assert card["rows_read"] == 3
    (tmp_path / "h.csv").write_text("visitor,article\nA1x,B0a\nA1x,B0b\nA2y,B0a\n")
    out, card = import_events(tmp_path / "h.csv", tmp_path / "d", "h", user="visitor", item="article")
    assert card["rows_read"] == 3
    out, card = import_events(tmp_path / "h.csv", tmp_path / "d", "h", user="0", item="1", header=True,
                              overwrite=True)
    assert card["rows_read"] == 3 and ["visitor", "article"] not in inter(out)
    (tmp_path / "n.csv").write_text("user_id,item_id\nu1,a\nu1,b\n")
    r = cli(tmp_path / "n.csv", "--no-header", "--user", "0", "--item", "1", "-o", tmp_path / "d", "--name", "my data")
    assert r.returncode == 0 and "rows read        3" in r.stdout
    assert f"train -c '{tmp_path / 'd' / 'my data' / 'suggested.yaml'}'" in r.stdout


@pytest.mark.parametrize(("name", "data", "args", "want"), [
    ("l1.csv", b"user_id,item_id,timestamp\n1,a,1\n1,caf\xe9,100\n", [],
     "line 3: the file is not UTF-8 text — save it as UTF-8"),
    ("q.csv", b'user_id,artist,timestamp\n1,x,100\n2,"Weird Al,200\n3,x,300\n', ["--item", "artist"],
     "line 3: expected 3 columns, found 2"),
    ("semi.csv", b"user_id;item_id;timestamp\n1;a;100\n", ["--sep", ","], "--sep ',' does not split the first line"),
], ids=["latin1", "unbalanced-quote", "wrong-sep"])
def test_messages_name_the_line_and_the_fix(tmp_path: Path, name: str, data: bytes, args: list[str],
                                            want: str) -> None:
    (tmp_path / name).write_bytes(data)
    r = cli(tmp_path / name, *args, "-o", tmp_path / "d")
    assert r.returncode == 1 and want in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_truncated_gzip_says_it_once(tmp_path: Path) -> None:
    import gzip
    body = "user_id,item_id,timestamp\n" + "".join(f"u{k},i{k},{k}\n" for k in range(50_000))
    packed = gzip.compress(body.encode())
    (tmp_path / "t.csv.gz").write_bytes(packed[:len(packed) // 2])  # cut past the sniffed head
    r = cli(tmp_path / "t.csv.gz", "-o", tmp_path / "d")
    assert r.returncode == 1 and "truncated or corrupt" in r.stderr and r.stderr.count("again") == 1, r.stderr


def test_import_movielens_reads_a_quoted_header(tmp_path: Path) -> None:
    from mlconnect.data.movielens import import_movielens

    (tmp_path / "ratings.csv").write_text('"userId","movieId","rating","timestamp"\n1,2,3.5,100\n1,3,4,200\n')
    out = import_movielens(tmp_path / "ratings.csv", tmp_path / "d", "mlq")
    assert len((out / "mlq.inter").read_text().splitlines()) == 3


def test_time_none_ignores_a_found_time_column(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("user_id,item_id,timestamp\nu1,b,9\nu1,a,1\n")
    out, card = import_events(tmp_path / "t.csv", tmp_path / "d", "t", time="none")
    assert inter(out) == [["user_id:token", "item_id:token"], ["u1", "b"], ["u1", "a"]]
    assert card["columns"]["time"] is None


def test_item_table_uses_the_same_missing_id_rule(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\nu1,a,1\nu1,b,2\n")
    pq.write_table(pa.table({"item_id": ["a", "", "NA", "b"], "title": ["A", "x", "y", "B"]}), tmp_path / "i.parquet")
    out, card = import_events(tmp_path / "e.csv", tmp_path / "d", "e", items_file=tmp_path / "i.parquet")
    assert (out / "e.item").read_text().splitlines() == ["item_id:token\ttitle:token", "a\tA", "b\tB"]


def test_a_far_future_sentinel_is_a_time(tmp_path: Path) -> None:
    (tmp_path / "s.csv").write_text("user_id,item_id,ts\n1,a,2019-10-01 00:00:00\n1,b,9999-12-31 00:00:00\n")
    out, _ = import_events(tmp_path / "s.csv", tmp_path / "d", "s")
    assert [r[2] for r in inter(out)[1:]] == ["1569888000", "253402214400"]
