"""JSON Lines input: field names from the first records, and a read of only the needed fields.

Arrow's JSON reader parses every field by default (review texts, nested ``style`` and ``image``
...), so memory grew with the file (about 3x its size). The needed fields' types are sniffed from
the first records and given as an explicit schema; every other field is skipped while parsing.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.json as pajson

from mlconnect.data.textio import head_lines, lines
from mlconnect.errors import DataError

if TYPE_CHECKING:
    from mlconnect.data.readers import Source

JSON_HINT = "fix the file: one JSON object per line"
_TYPES = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}


def _head_records(src: Source) -> list[dict[str, object]]:
    records = []
    for lineno, line in enumerate(head_lines(src.path, src.compression, n=50), start=1):
        if lineno == 1 and line.lstrip().startswith("["):
            raise DataError(str(src.path), "a JSON array, not JSON Lines", line=1,
                            hint="write one JSON object per line (pandas: to_json(orient='records', lines=True))")
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DataError(str(src.path), f"not JSON Lines: {exc}", line=lineno, hint=JSON_HINT) from None
        if not isinstance(rec, dict):
            raise DataError(str(src.path), "not JSON Lines: a record is not an object", line=lineno, hint=JSON_HINT)
        records.append(rec)
    return records


def jsonl_names(src: Source) -> list[str]:
    """Field names of a JSON Lines file, from its first records (Python's json: types may vary)."""
    names: dict[str, None] = {}
    for rec in _head_records(src):
        names.update(dict.fromkeys(rec))
    return list(names)


def _schema(src: Source, columns: list[str]) -> pa.Schema | None:
    """Arrow types of ``columns`` as the first records have them; None when one is unclear (null, nested, mixed)."""
    fields = []
    records = _head_records(src)
    for c in columns:
        kinds = {type(r[c]) for r in records if r.get(c) is not None}
        if kinds == {int, float}:
            kinds = {float}
        if len(kinds) != 1 or (kind := kinds.pop()) not in _TYPES:
            return None
        fields.append((c, _TYPES[kind]))
    return pa.schema(fields)


def read_jsonl(src: Source, columns: list[str]) -> pa.Table:
    schema = _schema(src, columns) if set(columns) <= set(src.names) else None
    if schema is not None:
        try:
            # open_json streams blocks; read_json would first hold the whole file in memory
            return pajson.open_json(src.stream(), parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore")).read_all()
        except pa.ArrowInvalid:
            pass  # a type the first records did not show (an int id turning float): read as before
    try:
        table = pajson.read_json(src.stream())
    except pa.ArrowInvalid as exc:
        if "changed from" not in str(exc):
            raise
        table = _read_mixed(src, columns)  # ids that are numbers in some records, text in others
    missing = [c for c in columns if c not in table.column_names]
    if missing:  # names are only known after reading: report like a missing CSV column
        raise DataError(str(src.path), f"no column {missing[0]!r} (the records have: "
                        f"{', '.join(table.column_names)})", line=1)
    return table.select(columns)


def _read_mixed(src: Source, columns: list[str]) -> pa.Table:
    """The slow path (Python's json): a column whose values change type is read as text."""
    values: dict[str, list[object]] = {c: [] for c in columns}
    with src.stream() as f:
        for lineno, raw in enumerate(lines(f), start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError as exc:
                raise DataError(str(src.path), f"not JSON: {exc}", line=lineno, hint=JSON_HINT) from None
            for c in columns:
                values[c].append(rec.get(c) if isinstance(rec, dict) else None)
    out = {}
    for c, vals in values.items():
        kinds = {type(v) for v in vals if v is not None}
        out[c] = pa.array(vals) if len(kinds) <= 1 else pa.array([None if v is None else str(v) for v in vals])
    return pa.table(out)
