"""``data import`` on tiny copies of public datasets' exact shapes (headers, separators, id/time formats)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlconnect.data.importer import import_events
from mlconnect.errors import DataError, UsageError

TS = [978300760, 978300860, 978300960, 978301060]


def inter(folder: Path) -> list[list[str]]:
    return [line.split("\t") for line in (folder / f"{folder.name}.inter").read_text().splitlines()]


def test_movielens_1m_double_colon_separator(tmp_path: Path) -> None:
    f = tmp_path / "ratings.dat"
    f.write_text("".join(f"{u}::{i}::4::{t}\n" for u, i, t in zip((1, 1, 2, 2), (1193, 661, 914, 3408), TS)))
    out, card = import_events(f, tmp_path / "o", "ml1m", user="0", item="1", time="3")
    assert card["format"] == "CSV ('::'-separated, no header)"
    assert inter(out)[1:] == [["1", "1193", "978300760"], ["1", "661", "978300860"], ["2", "914", "978300960"],
                              ["2", "3408", "978301060"]]
    f.write_text("1::1193::4::978300760\n1::661::4\n")
    with pytest.raises(DataError, match=r"line 2.*expected 4 fields separated by '::', found 3"):
        import_events(f, tmp_path / "o", "bad", user="0", item="1", time="3", sep="::")
    assert not (tmp_path / "o" / "bad").exists()


def test_amazon_reviews_old_and_2023_column_names(tmp_path: Path) -> None:
    old = tmp_path / "Books_5.json"
    old.write_text("".join(json.dumps({"reviewerID": f"A{u}", "asin": f"B{i}", "overall": 5.0,
                                       "unixReviewTime": t, "reviewText": 'a, "b"'}) + "\n"
                           for u, i, t in zip("1122", "1212", TS)))
    _, card = import_events(old, tmp_path / "o", "old")
    assert card["columns"] == {"user": "reviewerID", "item": "asin", "time": "unixReviewTime"}
    new = tmp_path / "Books.jsonl"
    new.write_text("".join(json.dumps({"rating": 5.0, "asin": f"C{i}", "parent_asin": f"B{i}", "user_id": f"AG{u}",
                                       "timestamp": t * 1000 + 123}) + "\n" for u, i, t in zip("1122", "1212", TS)))
    out, card = import_events(new, tmp_path / "o", "new")
    assert card["columns"] == {"user": "user_id", "item": "parent_asin", "time": "timestamp"}
    assert [r[2] for r in inter(out)[1:]] == [f"{t}.123" for t in TS]  # ms -> s with no float noise


def test_diginetica_na_users_fall_back_to_sessions(tmp_path: Path) -> None:
    f = tmp_path / "train-item-views.csv"
    f.write_text("sessionId;userId;itemId;timeframe;eventdate\n1;NA;81766;526309;2016-05-09\n"
                 "1;NA;31331;1031018;2016-05-09\n2;7;32118;243569;2016-05-09\n2;7;9654;75848;2016-05-09\n")
    out, card = import_events(f, tmp_path / "o", "dg")
    assert card["columns"]["user"] == "sessionId" and card["users"] == 2
    assert [r[0] for r in inter(out)[1:]] == ["1", "1", "2", "2"]


def test_lastfm_tsv_keeps_quotes_and_unicode_and_iso_z(tmp_path: Path) -> None:
    names = ['"Weird Al" Yankovic - Amish Paradise', "Björk, Jóga", "Sigur Rós – Hoppípolla", 'x;y "z']
    iso = [datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") for t in TS]
    f = tmp_path / "userid-timestamp-artid-artname-traid-traname.tsv"
    f.write_text("".join(f"user_000001\t{s}\tf1b1cf71\tDeep Dish\t\t{n}\n" for s, n in zip(iso, names)))
    out, _ = import_events(f, tmp_path / "o", "lfm", user="0", item="5", time="1")
    rows = inter(out)[1:]
    assert [r[1] for r in rows] == names
    assert [r[2] for r in rows] == [str(t) for t in TS]  # whole seconds stay whole (no .0000001)


def test_yoochoose_iso_millis_and_parquet_ms_utc(tmp_path: Path) -> None:
    f = tmp_path / "yoochoose-clicks.dat"
    iso = [datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.123Z") for t in TS]
    f.write_text("".join(f"{u},{s},214536502,0\n" for u, s in zip((1, 1, 2, 2), iso)))
    out, _ = import_events(f, tmp_path / "o", "yc", user="0", item="2", time="1")
    assert [r[2] for r in inter(out)[1:]] == [f"{t}.123" for t in TS]
    table = pa.table({"user": pa.array(["u1", "u1", "u\t2", "u\t2"]).dictionary_encode(),
                      "item": pa.array(['i,"1"', "i2", "i1", "ü"]).dictionary_encode(),
                      "ts": pa.array([t * 1000 + 5 for t in TS], pa.timestamp("ms", "UTC"))})
    pq.write_table(table, tmp_path / "ev.parquet")
    out, card = import_events(tmp_path / "ev.parquet", tmp_path / "o", "pq")
    assert card["rows_read"] == card["rows_kept"] + card["rows_dropped"] == 4
    assert card["ids_with_tab_or_newline_made_spaces"] == {"user": 2, "item": 0}
    assert inter(out)[1:] == [["u1", 'i,"1"', f"{TS[0]}.005"], ["u1", "i2", f"{TS[1]}.005"],
                              ["u 2", "i1", f"{TS[2]}.005"], ["u 2", "ü", f"{TS[3]}.005"]]


def test_goodreads_date_added_and_steam_iso_with_string_ids(tmp_path: Path) -> None:
    f = tmp_path / "goodreads_interactions.json"
    dates = ["Sun Jul 30 07:44:10 -0700 2017", "Mon Jul 31 00:00:00 +0000 2017"]
    f.write_text("".join(json.dumps({"user_id": "8842281e1d1347389f2ab93d60773d4d", "book_id": b, "date_added": d,
                                     "rating": 5}) + "\n" for b, d in zip(("24375664", "18245960"), dates)))
    out, card = import_events(f, tmp_path / "o", "gr")
    assert card["columns"]["time"] == "date_added"
    assert [r[2] for r in inter(out)[1:]] == ["1501425850", "1501459200"]
    f = tmp_path / "steam.jsonl"
    f.write_text("".join(json.dumps({"user_id": "js41637", "item_id": i, "timestamp": s}) + "\n"
                         for i, s in (("10", "2000-12-31T22:12:40Z"), ("20", "2000-12-31T22:14:20Z"))))
    out, _ = import_events(f, tmp_path / "o", "steam")
    assert [r[2] for r in inter(out)[1:]] == ["978300760", "978300860"]


def test_retailrocket_where_filters_and_card_sums(tmp_path: Path) -> None:
    f = tmp_path / "events.csv"
    kinds = ["view", "addtocart", "transaction", "view", "transaction", "view"]
    f.write_text("timestamp,visitorid,event,itemid,transactionid\n" + "".join(
        f"{t * 1000},{v},{e},{i},{4000 if e == 'transaction' else ''}\n"
        for t, v, e, i in zip(TS + [TS[0] + 1, TS[0] + 2], (257597, 257597, 257597, 992329, 992329, 111),
                              kinds, (355908, 248676, 318965, 355908, 5411, 1))))
    out, card = import_events(f, tmp_path / "o", "buy", where=['event == "transaction"'])
    assert card["columns"] == {"user": "visitorid", "item": "itemid", "time": "timestamp"}
    assert card["rows_read"] == 6 and card["rows_kept"] == 2
    assert card["dropped"] == {"--where event == 'transaction'": 4} and card["rows_dropped"] == 4
    assert inter(out)[1:] == [["257597", "318965", str(TS[2])], ["992329", "5411", str(TS[0] + 1)]]
    _, card = import_events(f, tmp_path / "o", "not_view", where=["event != 'view'"])
    assert card["rows_kept"] == 3 and card["rows_read"] == card["rows_kept"] + card["rows_dropped"]
    with pytest.raises(UsageError, match=r"matches no row \('event' has: 'addtocart', 'transaction', 'view'\)"):
        import_events(f, tmp_path / "o", "typo", where=['event == "purchase"'])
    assert not (tmp_path / "o" / "typo").exists()


def test_jsonl_ids_that_change_type_and_broken_lines(tmp_path: Path) -> None:
    f = tmp_path / "steam.jsonl"
    f.write_text('{"user_id": "a", "item_id": 10, "timestamp": 978300760}\n'
                 '{"user_id": "a", "item_id": "x2", "timestamp": 978300860}\n')
    out, _ = import_events(f, tmp_path / "o", "mixed")
    assert inter(out)[1:] == [["a", "10", "978300760"], ["a", "x2", "978300860"]]
    f.write_text('{"user_id": "a", "item_id": 10, "timestamp": 1}\n{"user_id": "a", "item_id": 11\n')
    with pytest.raises(DataError, match=r"steam.jsonl, line 2: not JSON Lines.*one JSON object per line"):
        import_events(f, tmp_path / "o", "broken")


@pytest.mark.parametrize("sep", [",", "\t"])
def test_a_line_with_too_many_or_few_fields_is_named(tmp_path: Path, sep: str) -> None:
    f = tmp_path / "ratings.csv"
    rows = ["userId", "movieId", "timestamp"], ["1", "2", "978300760"], ["1", "3", "978300761", "9"], ["2", "3"]
    f.write_text("".join(sep.join(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"ratings.csv, line 3: expected 3 columns, found 4"):
        import_events(f, tmp_path / "o", "bad")
    assert not (tmp_path / "o" / "bad").exists()


def test_utf16_text_is_refused_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "export.txt"
    f.write_bytes("userId\tmovieId\n1\t2\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"export.txt, line 1: the file is UTF-16 text — save it as UTF-8"):
        import_events(f, tmp_path / "o", "u16")
