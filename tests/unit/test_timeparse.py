"""Time columns -> Unix seconds: units by magnitude, ISO-8601 with and without zone, native types."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from mlconnect.data.timeparse import TimeError, to_seconds

S = 1_700_000_000


@pytest.mark.parametrize("scale,unit", [(1, "s"), (1_000, "ms"), (1_000_000, "us"), (1_000_000_000, "ns")])
def test_unix_units_by_magnitude(scale: int, unit: str) -> None:
    secs, how = to_seconds(pa.chunked_array([pa.array([S * scale, (S + 60) * scale, None])]))
    assert how == f"Unix {unit} (by magnitude)"
    assert secs[:2].tolist() == [S, S + 60] and np.isnan(secs[2])
    secs, how = to_seconds(pa.chunked_array([pa.array([str(S * scale)])]), unit)
    assert secs.tolist() == [S] and how == f"Unix {unit}"


def test_iso_strings_dates_and_native_timestamps() -> None:
    secs, how = to_seconds(pa.chunked_array([pa.array(["2023-11-14T22:13:20Z", "2023-11-14T23:13:20+01:00"])]))
    assert secs.tolist() == [S, S] and "zone" in how
    secs, _ = to_seconds(pa.chunked_array([pa.array(["2023-11-14 22:13:20", "2023-11-14"])]))
    assert secs.tolist() == [S, S - (22 * 3600 + 13 * 60 + 20)]
    when = dt.datetime.fromtimestamp(S, dt.timezone.utc)
    assert to_seconds(pa.chunked_array([pa.array([when], pa.timestamp("ms", "UTC"))]))[0].tolist() == [S]
    assert to_seconds(pa.chunked_array([pa.array([when.date()], pa.date32())]))[0].tolist() == [S - 80000]


def test_mixed_formats_and_units_name_the_row() -> None:
    with pytest.raises(TimeError) as err:
        to_seconds(pa.chunked_array([pa.array([str(S), str(S + 1), str(S * 1000)])]))
    assert err.value.row == 2 and "mixed time units" in str(err.value)
    with pytest.raises(TimeError) as err:
        to_seconds(pa.chunked_array([pa.array(["2024-01-01", "2024-01-02", "nope", "2024-01-03"])]))
    assert err.value.row == 2 and "not a time" in str(err.value)
