"""Event logs in: CSV / TSV (plain, gzip or zstd), Parquet (a file or a folder of parts), JSON Lines.

``open_source`` looks at a file (magic bytes, extension, the first lines) and returns a ``Source``:
its format, column names (from the header, or ``0, 1, ...`` by position when there is none) and
a ``read`` that loads the named columns with pyarrow. CSV columns come back as strings so ids
keep their exact text ("007" stays "007"); Parquet and JSON keep their own types.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from mlconnect.data.atomic import BOM
from mlconnect.errors import DataError, MlconnectError

GZIP, ZSTD, PARQUET = b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PAR1"
SEPARATORS = ("::", "\t", ",", ";", "|", " ")  # '::' first: MovieLens 1M/10M ratings.dat
# pandas' usual missing markers too: Diginetica writes userId "NA"; kept as an id it would merge
# every anonymous session into one user.
NULLS = ["", "null", "NULL", "NA", "N/A", "NaN", "nan"]
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")


@dataclass
class Source:
    """One input: how to read it and what its columns are called."""

    path: Path
    kind: str  # csv | parquet | jsonl
    names: list[str]
    compression: str | None = None
    sep: str = ","
    header: bool = True
    parts: list[Path] = field(default_factory=list)  # Parquet part files, in order

    def describe(self) -> str:
        if self.kind == "csv":
            sep = {"\t": "tab", ",": "comma", " ": "space"}.get(self.sep, repr(self.sep))
            comp = f", {self.compression}" if self.compression else ""
            return f"CSV ({sep}-separated{comp}, {'header' if self.header else 'no header'})"
        if self.kind == "parquet":
            return f"Parquet ({len(self.parts)} file{'s' * (len(self.parts) != 1)})"
        return "JSON Lines"

    def read(self, columns: list[str]) -> pa.Table:
        """The named columns (deduplicated, in this order) as an Arrow table."""
        columns = list(dict.fromkeys(columns))
        try:
            return _READERS[self.kind](self, columns)
        except (pa.ArrowInvalid, OSError, EOFError) as exc:
            if self.kind == "csv" and (m := _BAD_ROW.search(str(exc))):
                raise DataError(str(self.path), f"expected {m.group(1)} columns, found {m.group(2)}",
                                line=_line_of(self, m.group(3).encode()),
                                hint="fix that line, or pass the right --sep") from None
            raise DataError(str(self.path), _arrow_problem(exc, self.compression),
                            hint="fix the file, or export it again") from None

    def stream(self) -> pa.NativeFile:
        return pa.input_stream(str(self.path), compression=self.compression)


_BAD_ROW = re.compile(r"Expected (\d+) columns, got (\d+): (.*)$", re.S)


def _line_of(src: Source, text: bytes) -> int | None:
    """1-based line number of the first line that reads ``text`` (Arrow quotes the row, not its line)."""
    with src.stream() as f:
        for lineno, raw in enumerate(_lines(f), start=1):
            if raw.rstrip(b"\r") == text.rstrip(b"\r\n"):
                return lineno
    return None


def _arrow_problem(exc: Exception, compression: str | None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if compression and ("runcated" in text or "inflate" in text or "compressed" in text.lower()):
        return f"the {compression} stream is truncated or corrupt ({text}); export or download it again"
    return f"cannot be read: {text}"


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _head_lines(path: Path, compression: str | None, n: int = 20) -> list[str]:
    try:
        with pa.input_stream(str(path), compression=compression) as f:
            head = f.read(1 << 16)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(str(path), _arrow_problem(exc, compression)) from None
    head = head.removeprefix(BOM)
    lines = head.decode("utf-8", errors="replace").splitlines()
    if len(head) == 1 << 16 and lines:
        lines = lines[:-1]  # the last line may be cut
    return [line for line in lines if line.strip()][:n]


def sniff_separator(lines: list[str]) -> str:
    """The separator that splits every sampled line into the same number (> 1) of fields."""
    def count(line: str, sep: str) -> int:
        return len(line.split(sep)) if sep != " " else len(line.split())

    for sep in SEPARATORS:
        counts = {count(line, sep) for line in lines}
        if len(counts) == 1 and counts.pop() > 1:
            return sep
    # No separator is uniform (a broken line): the one that splits the header and most lines alike,
    # so the read then names the odd line instead of calling the whole file one column.
    agree = {sep: sum(count(line, sep) == count(lines[0], sep) for line in lines) for sep in SEPARATORS
             if count(lines[0], sep) > 1}
    return max(agree, key=lambda sep: agree[sep]) if agree else ","


def looks_like_header(first: list[str], second: list[str] | None, known: set[str]) -> bool:
    """A header names columns: a known name, or text above a row that has numbers."""
    if any(norm(f) in known for f in first):
        return True
    if any(_NUMBER.match(f) for f in first):
        return False
    return second is not None and any(_NUMBER.match(f) for f in second)


def norm(name: str) -> str:
    """Column names compared loosely: case, '_', '-', ' ' and a RecBole ':type' suffix ignored."""
    return re.sub(r"[\s_\-]", "", name.split(":")[0]).lower()


def open_source(path: Path, *, sep: str | None = None, header: bool | None = None,
                known: set[str] | None = None) -> Source:
    """Detect the format of ``path`` (a file, or a folder of Parquet parts) and its column names."""
    path = Path(path).expanduser()
    if not path.exists():
        raise MlconnectError(f"{path} does not exist", "give a CSV, TSV, Parquet or JSON Lines file (or a folder "
                             "of Parquet parts)")
    if path.is_dir():
        parts = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))
                       and p.suffix in (".parquet", ".parq", ".pq"))
        if not parts:
            raise MlconnectError(f"{path} holds no .parquet files", "give one file, or a folder of Parquet parts")
        return Source(path, "parquet", _parquet_names(parts), parts=parts)
    if path.stat().st_size == 0:
        raise DataError(str(path), "the file is empty", hint="export the data again")
    magic = _magic(path)
    if magic == PARQUET:
        return Source(path, "parquet", _parquet_names([path]), parts=[path])
    if magic[:2] in (b"\xff\xfe", b"\xfe\xff"):  # Excel's "Unicode text": would read as one column of noise
        raise DataError(str(path), "the file is UTF-16 text", line=1, hint="save it as UTF-8 and import again")
    compression = "gzip" if magic[:2] == GZIP else "zstd" if magic == ZSTD else None
    lines = _head_lines(path, compression)
    if not lines:
        raise DataError(str(path), "the file is empty (no rows)", hint="export the data again")
    stem = path.name.lower().removesuffix(".gz").removesuffix(".zst")
    if stem.endswith((".jsonl", ".ndjson", ".json")) or lines[0].lstrip().startswith("{"):
        src = Source(path, "jsonl", [], compression=compression)
        src.names = jsonl_names(src)
        return src
    sep = {"tab": "\t", "\\t": "\t", "space": " "}.get(sep or "", sep) or sniff_separator(lines)
    def split(line: str) -> list[str]:  # the csv module only to read the header's quoting
        if sep == " " or len(sep) > 1 or sep == "\t":
            return line.split(sep if sep != " " else None)
        return next(csv.reader([line], delimiter=sep))

    first = [f.strip() for f in split(lines[0])]
    second = [f.strip() for f in split(lines[1])] if len(lines) > 1 else None
    if header is None:
        header = looks_like_header(first, second, known or set())
    names = [f.split(":")[0] for f in first] if header else [str(i) for i in range(len(first))]
    return Source(path, "csv", names, compression=compression, sep=sep, header=header)


def _parquet_names(parts: list[Path]) -> list[str]:
    try:
        return list(pq.read_schema(parts[0]).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(str(parts[0]), f"not a readable Parquet file ({exc})") from None


def _read_csv(src: Source, columns: list[str]) -> pa.Table:
    if len(src.sep) > 1:
        return _read_multichar(src, columns)
    return pacsv.read_csv(
        src.stream(),
        read_options=pacsv.ReadOptions(column_names=src.names, skip_rows=1 if src.header else 0,
                                       block_size=8 << 20),
        # Tab-separated files are not quoted (Last.fm 1K, MovieLens u.data): a track named
        # '"Weird Al" Yankovic - ...' must keep its quotes, not lose them to CSV quoting.
        parse_options=pacsv.ParseOptions(delimiter=src.sep, ignore_empty_lines=True,
                                         quote_char=False if src.sep == "\t" else '"'),
        convert_options=pacsv.ConvertOptions(include_columns=columns, null_values=NULLS, strings_can_be_null=True,
                                             column_types={c: pa.string() for c in columns}))


def _read_multichar(src: Source, columns: list[str]) -> pa.Table:
    """A multi-character separator ('::'): whole lines through Arrow, split with ``split_pattern``."""
    lines = pacsv.read_csv(
        src.stream(), read_options=pacsv.ReadOptions(column_names=["line"], skip_rows=1 if src.header else 0,
                                                     block_size=8 << 20),
        parse_options=pacsv.ParseOptions(delimiter="\x1f", quote_char=False, ignore_empty_lines=True),
        convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}, strings_can_be_null=False)
    ).column("line").combine_chunks()
    lines = pc.utf8_rtrim(lines, "\r")
    fields = pc.split_pattern(lines, src.sep)
    bad = np.flatnonzero(pc.list_value_length(fields).to_numpy(zero_copy_only=False) != len(src.names))
    if len(bad):
        path, line, _ = row_location(src, int(bad[0]))
        raise DataError(path, f"expected {len(src.names)} fields separated by {src.sep!r}, found "
                        f"{len(fields[int(bad[0])])}", line=line, hint="fix the line, or pass the right --sep")
    out = {}
    for c in columns:
        col = pc.list_element(fields, src.names.index(c))
        out[c] = pc.if_else(pc.is_in(col, pa.array(NULLS)), pa.scalar(None, pa.string()), col)
    return pa.table(out)


def _read_parquet(src: Source, columns: list[str]) -> pa.Table:
    tables = [pq.read_table(p, columns=columns) for p in src.parts]
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def _read_jsonl(src: Source, columns: list[str]) -> pa.Table:
    try:
        table = pajson.read_json(src.stream())
    except pa.ArrowInvalid as exc:
        if "changed from" not in str(exc):
            raise
        table = _read_jsonl_mixed(src, columns)  # ids that are numbers in some records, text in others
    missing = [c for c in columns if c not in table.column_names]
    if missing:  # names are only known after reading: report like a missing CSV column
        raise DataError(str(src.path), f"no column {missing[0]!r} (the records have: "
                        f"{', '.join(table.column_names)})", line=1)
    return table.select(columns)


def _read_jsonl_mixed(src: Source, columns: list[str]) -> pa.Table:
    """The slow path (Python's json): a column whose values change type is read as text."""
    values: dict[str, list[object]] = {c: [] for c in columns}
    with src.stream() as f:
        for lineno, raw in enumerate(_lines(f), start=1):
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


JSON_HINT = "fix the file: one JSON object per line"


def jsonl_names(src: Source) -> list[str]:
    """Field names of a JSON Lines file, from its first records (Python's json: types may vary)."""
    names: dict[str, None] = {}
    for lineno, line in enumerate(_head_lines(src.path, src.compression, n=50), start=1):
        try:
            rec = json.loads(line)
        except ValueError as exc:
            raise DataError(str(src.path), f"not JSON Lines: {exc}", line=lineno, hint=JSON_HINT) from None
        if not isinstance(rec, dict):
            raise DataError(str(src.path), "not JSON Lines: a record is not an object", line=lineno, hint=JSON_HINT)
        names.update(dict.fromkeys(rec))
    return list(names)


def row_location(src: Source, row: int) -> tuple[str, int | None, str]:
    """(file, line, '') of the 0-based data ``row`` for text files; (part file, None, 'row N') for Parquet."""
    if src.kind == "parquet":
        for p in src.parts:
            n = pq.ParquetFile(p).metadata.num_rows
            if row < n:
                return str(p), None, f"row {row + 1}"
            row -= n
        return str(src.path), None, f"row {row + 1}"
    skip = 1 if src.kind == "csv" and src.header else 0
    seen = -skip
    with src.stream() as f:
        for lineno, raw in enumerate(_lines(f), start=1):
            if raw.strip():
                if seen == row:
                    return str(src.path), lineno, ""
                seen += 1
    return str(src.path), None, f"row {row + 1}"


def _lines(f: pa.NativeFile) -> Iterator[bytes]:
    rest = b""
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            if rest:
                yield rest
            return
        parts = (rest + chunk).split(b"\n")
        rest = parts.pop()
        yield from parts


_READERS: dict[str, Callable[[Source, list[str]], pa.Table]] = {
    "csv": _read_csv, "parquet": _read_parquet, "jsonl": _read_jsonl}
