"""Tables fit the terminal: transposed, or reduced to what differs, and they say what was left out."""

from __future__ import annotations

from mlconnect.cli.tablefit import FIELD, fit_table, table_width

WIDE = ["name", "model", "dataset", "hidden_size", "learning_rate", "best_valid", "epochs", "wall_time_s",
        "throughput_tokens_per_s", "peak_gpu_mem_mb", "test/hit@10", "test/mrr@10", "test/ndcg@10",
        "test/precision@10"]  # the 14 columns that came out as "ba…", "SA…" at 80 columns


def _rows(n: int) -> list[dict[str, str]]:
    return [{"name": f"baseline_{i}", "model": "SASRec", "dataset": "ml-100k", "hidden_size": str(32 * (i + 1)),
             "learning_rate": "0.001", "best_valid": f"0.06{i}", "epochs": "50", "wall_time_s": f"8{i}.25",
             "throughput_tokens_per_s": "5.123e+04", "peak_gpu_mem_mb": "-", "test/hit@10": f"0.12{i}",
             "test/mrr@10": f"0.04{i}", "test/ndcg@10": f"0.06{i}", "test/precision@10": f"0.012{i}"}
            for i in range(n)]


def test_a_table_that_fits_is_untouched() -> None:
    rows = _rows(2)
    f = fit_table(rows, ["name", "model"], 80, key="name")
    assert f.columns == ["name", "model"] and f.rows == rows and f.notes == []


def test_fourteen_columns_at_80_are_transposed_with_every_value_whole() -> None:
    rows = _rows(3)
    assert table_width(rows, WIDE) > 80
    f = fit_table(rows, WIDE, 80, key="name", allow_transpose=True)
    assert table_width(f.rows, f.columns) <= 80
    assert f.columns == [FIELD, "baseline_0", "baseline_1", "baseline_2"]
    assert [r[FIELD] for r in f.rows] == WIDE[1:]  # every field kept, in order
    for i, row in enumerate(rows):
        assert all(f.rows[j][f"baseline_{i}"] == row[c] for j, c in enumerate(WIDE[1:]))
    assert "transposed" in f.notes[0]


def test_without_transposing_it_keeps_what_differs_and_names_what_it_left_out() -> None:
    rows = _rows(12)  # too many to transpose
    f = fit_table(rows, WIDE, 80, key="name", allow_transpose=True)
    assert table_width(f.rows, f.columns) <= 80
    assert f.columns[0] == "name" and "model" not in f.columns  # the same in every row: said once
    assert f.notes[0].startswith("same in every row: model=SASRec, dataset=ml-100k, learning_rate=0.001")
    left = [c for c in WIDE if c not in f.columns and f"{c}=" not in f.notes[0]]
    assert left and f.notes[1].startswith(f"left out to fit 80 columns: {', '.join(left)}")


def test_duplicate_names_get_their_own_column() -> None:
    rows = _rows(2)
    rows[1]["name"] = rows[0]["name"]
    f = fit_table(rows, WIDE, 80, key="name", allow_transpose=True)
    assert f.columns == [FIELD, "baseline_0", "baseline_0#2"]
