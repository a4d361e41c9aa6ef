"""Event logs in: CSV / TSV (plain, gzip or zstd), Parquet (a file or a folder of parts), JSON Lines.

``open_source`` looks at a file (magic bytes, extension, the first lines) and returns a ``Source``:
its format, column names (from the header, or ``0, 1, ...`` by position when there is none) and
a ``read`` that loads the named columns with pyarrow. CSV columns come back as strings so ids
keep their exact text ("007" stays "007"); Parquet and JSON keep their own types.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mlconnect.data.jsonl import jsonl_names, read_jsonl
from mlconnect.data.textio import arrow_problem as _arrow_problem
from mlconnect.data.textio import head_lines as _head_lines
from mlconnect.data.textio import lines as _lines
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
        except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, EOFError) as exc:
            if self.kind == "csv" and (m := _BAD_ROW.search(str(exc))):
                raise DataError(str(self.path), f"expected {m.group(1)} columns, found {m.group(2)}",
                                line=_line_of(self, m.group(3).encode()),
                                hint="fix that line, or pass the right --sep") from None
            if "invalid UTF8" in str(exc):  # Latin-1 / Windows-1252 exports
                raise DataError(str(self.path), "the file is not UTF-8 text", line=_first_non_utf8(self),
                                hint="save it as UTF-8 (e.g. iconv -f latin1 -t utf-8) and import again") from None
            raise DataError(str(self.path), _arrow_problem(exc, self.compression),
                            hint="fix the file, or export it again") from None

    def stream(self) -> pa.NativeFile:
        return pa.input_stream(str(self.path), compression=self.compression)


_BAD_ROW = re.compile(r"Expected (\d+) columns, got (\d+): (.*)$", re.S)


def _line_of(src: Source, text: bytes) -> int | None:
    """1-based line number of the first line that reads ``text`` (Arrow quotes the row, not its line)."""
    # A row with an unbalanced quote runs on over several lines: match its first line.
    first = text.split(b"\n", 1)[0].rstrip(b"\r")
    with src.stream() as f:
        for lineno, raw in enumerate(_lines(f), start=1):
            if raw.rstrip(b"\r") == first:
                return lineno
    return None


def _first_non_utf8(src: Source) -> int | None:
    with src.stream() as f:
        for lineno, raw in enumerate(_lines(f), start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return lineno
    return None


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


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


def looks_like_header(first: list[str], rest: list[list[str]], known: set[str]) -> bool:
    """A header names columns: a known name, or text above a column that is numbers in every sampled row.

    Every row, not just the second: a Last.fm track named "1979" on line 2 must not make line 1 a header.
    """
    if any(norm(f) in known for f in first):
        return True
    if any(_NUMBER.match(f) for f in first) or not rest:
        return False
    return any(all(k < len(row) and _NUMBER.match(row[k]) for row in rest) for k in range(len(first)))


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
        parts = sorted((p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))
                        and p.suffix in (".parquet", ".parq", ".pq")), key=natural_key)
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
    given_sep = sep
    sep = {"tab": "\t", "\\t": "\t", "space": " "}.get(sep or "", sep) or sniff_separator(lines)
    def split(line: str) -> list[str]:  # the csv module only to read the header's quoting
        if sep == " " or len(sep) > 1 or sep == "\t":
            return line.split(sep if sep != " " else None)
        return next(csv.reader([line], delimiter=sep))

    first = [f.strip() for f in split(lines[0])]
    if given_sep and len(first) == 1:  # else the whole line becomes one column named "0"
        raise DataError(str(path), f"--sep {given_sep!r} does not split the first line", line=1,
                        hint="pass the separator the file uses, or leave --sep out to detect it")
    if header is None:
        rest = [[f.strip() for f in split(line)] for line in lines[1:]]
        header = looks_like_header(first, rest, known or set())
    names = _unique([f.split(":")[0] for f in first]) if header else [str(i) for i in range(len(first))]
    return Source(path, "csv", names, compression=compression, sep=sep, header=header)


def _unique(names: list[str]) -> list[str]:
    """A repeated header name gets pandas' suffix (item_id, item_id.1): Arrow selects columns by name,
    so the second of two equal names, picked by position, would silently read the first."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        k = seen.get(name, 0)
        seen[name] = k + 1
        out.append(name if k == 0 else f"{name}.{k}")
    return out


def _parquet_names(parts: list[Path]) -> list[str]:
    try:
        return list(pq.read_schema(parts[0]).names)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(str(parts[0]), f"not a readable Parquet file ({exc})") from None


def _read_csv(src: Source, columns: list[str]) -> pa.Table:
    if len(src.sep) > 1:
        return _read_multichar(src, columns)
    try:
        return _csv_table(src, columns, newlines_in_values=False)
    except pa.ArrowInvalid as exc:
        # Quoted values with line breaks (reviews saved by pandas or Excel): Arrow's fast chunker
        # cuts blocks at any newline, so past the first 8 MB block a continuation line reads as a
        # short row. Read again with quote-aware chunking (slower, so only on that error).
        if src.sep == "\t" or not _BAD_ROW.search(str(exc)):
            raise
        try:
            return _csv_table(src, columns, newlines_in_values=True)
        except pa.ArrowInvalid:
            raise exc from None  # a real short row: report it as the fast path found it


def _csv_table(src: Source, columns: list[str], *, newlines_in_values: bool) -> pa.Table:
    return pacsv.read_csv(
        src.stream(),
        read_options=pacsv.ReadOptions(column_names=src.names, skip_rows=1 if src.header else 0,
                                       block_size=8 << 20),
        # Tab-separated files are not quoted (Last.fm 1K, MovieLens u.data): a track named
        # '"Weird Al" Yankovic - ...' must keep its quotes, not lose them to CSV quoting.
        parse_options=pacsv.ParseOptions(delimiter=src.sep, ignore_empty_lines=True,
                                         quote_char=False if src.sep == "\t" else '"',
                                         newlines_in_values=newlines_in_values),
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


def natural_key(path: Path) -> list[tuple[int, int | str]]:
    """Numbers in a path compare as numbers: dask's part.2 comes before part.10 (file order is time order)."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", str(path))]


def _read_parquet(src: Source, columns: list[str]) -> pa.Table:
    tables = [pq.read_table(p, columns=columns) for p in src.parts]
    if len(tables) == 1:
        return tables[0]
    # Parts written by different jobs may disagree on a column's type (ids as int64 in one part,
    # strings in the next): such a column is read as text in every part (ids are tokens anyway;
    # a time column then goes through the text parser).
    for c in columns:
        types = {t.schema.field(c).type for t in tables}
        if len(types) > 1:
            tables = [t.set_column(t.schema.get_field_index(c), c, _as_text(t.column(c), p, c))
                      for t, p in zip(tables, src.parts, strict=True)]
    return pa.concat_tables(tables, promote_options="permissive")


def _as_text(col: pa.ChunkedArray, part: Path, name: str) -> pa.ChunkedArray:
    try:
        if pa.types.is_dictionary(col.type):
            col = pc.cast(col, col.type.value_type)
        return pc.cast(col, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(str(part), f"column {name!r} is {col.type} here and another type in other parts, "
                        f"and cannot be read as text ({exc})", hint="write every part with one type") from None


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


_READERS: dict[str, Callable[[Source, list[str]], pa.Table]] = {
    "csv": _read_csv, "parquet": _read_parquet, "jsonl": read_jsonl}
