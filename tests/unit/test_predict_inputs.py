"""predict's inputs and outputs at the edges: the --users file as people write it (Excel's BOM, CSV
columns, quoted ids with commas, repeats) and --wide CSV cells that ids with spaces cannot break."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from mlconnect.deploy.predict import _Writer, read_users
from mlconnect.errors import UsageError

USERS = ["[PAD]", "007", "7", "user, comma", " padded", "ünï", "plain"]
SOURCE = SimpleNamespace(user_ids=USERS)  # read_users reads only the id map


def _read(tmp_path: Path, text: str, encoding: str = "utf-8") -> list[str]:
    f = tmp_path / "users.txt"
    f.write_text(text, encoding=encoding)
    return [USERS[i] for i in read_users(str(f), SOURCE)]


def test_one_id_a_line_with_bom_header_crlf_quotes_and_repeats(tmp_path: Path) -> None:
    text = 'user_id\r\n007\r\n\r\n"user, comma"\r\n7\r\n007\r\nünï  \r\nplain\r\n7\r\n'
    assert _read(tmp_path, text, encoding="utf-8-sig") == ["007", "user, comma", "7", "ünï", "plain"]
    # No header, the comma unquoted, an id whose leading space is part of it.
    assert _read(tmp_path, "user, comma\n padded\nplain\n") == ["user, comma", " padded", "plain"]


def test_a_csv_with_a_user_id_column(tmp_path: Path) -> None:
    text = 'segment,user_id,score\na,"user, comma",1\nb,007,2\nc,007,3\n'
    assert _read(tmp_path, text) == ["user, comma", "007"]


def test_unknown_ids_name_their_lines(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"'ghost' \(line 3\)"):
        _read(tmp_path, "user_id\n7\nghost\n")
    with pytest.raises(UsageError, match="lists no users"):
        _read(tmp_path, "user_id\n\n")


def test_wide_csv_cells_are_json_arrays(tmp_path: Path) -> None:
    items = pa.array(["[PAD]", "a b", "c,d", 'say "hi"', "ü"])
    out = tmp_path / "w.csv"
    w = _Writer(tmp_path / ".w.csv.partial", out, wide=True)
    scores = np.array([[0.5, 0.25, -np.inf], [3.0, 2.0, 1.0]], dtype=np.float32)  # -inf: not ranked
    w.write(pa.array(["u1", "u2"]), scores, np.array([[1, 2, 3], [4, 3, 1]]), items)
    w.close()
    rows = list(csv.DictReader((tmp_path / ".w.csv.partial").open(encoding="utf-8")))
    assert [json.loads(r["item_ids"]) for r in rows] == [["a b", "c,d"], ["ü", 'say "hi"', "a b"]]
    assert [json.loads(r["scores"]) for r in rows] == [[0.5, 0.25], [3.0, 2.0, 1.0]]
