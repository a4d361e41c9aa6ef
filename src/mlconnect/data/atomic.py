"""RecBole atomic files (``name:type`` TSV) read with pyarrow's multi-threaded CSV reader.

The fast path hands the whole file to Arrow: no Python per row. Token columns the caller wants
as ids come back dictionary-encoded (int32 codes + one copy of each distinct string), which is
what keeps a 10M-row file to a few hundred MB. When Arrow refuses a file, a second pass (the
error path only) finds the exact line and column so the message names them, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from mlconnect.errors import DataError

FIELD_TYPES = ("token", "float", "token_seq", "float_seq")
BOM = b"\xef\xbb\xbf"
_ARROW_TYPES = {"token": pa.string(), "float": pa.float64(), "token_seq": pa.string(), "float_seq": pa.string()}
_BAD_COLUMN = re.compile(r"In CSV column #(\d+)")


@dataclass
class AtomicFile:
    """One parsed atomic file: the wanted columns as an Arrow table, and each one's RecBole type."""

    path: Path
    types: dict[str, str]
    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows


def read_header(path: Path, field_sep: str) -> tuple[list[str], dict[str, str]]:
    """Column names and types from the first line (a UTF-8 BOM before it is allowed)."""
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as exc:
        raise DataError(str(path), f"cannot read the file ({exc.strerror or exc})") from None
    first = first.removeprefix(BOM)
    try:
        header = first.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not UTF-8 text ({exc.reason})", line=1) from None
    if not header.strip():
        raise DataError(str(path), "the file is empty (expected a header like user_id:token)", line=1)
    names: list[str] = []
    types: dict[str, str] = {}
    for col in header.split(field_sep):
        name, sep, ftype = col.partition(":")
        if not sep or not name:
            raise DataError(str(path), f"header column {col!r} has no type (write it as name:token, "
                            f"name:float, name:token_seq or name:float_seq)", line=1, column=col)
        if ftype not in FIELD_TYPES:
            raise DataError(str(path), f"unknown type {ftype!r} (use one of {', '.join(FIELD_TYPES)})",
                            line=1, column=name)
        names.append(name)
        types[name] = ftype
    return names, types


def read_atomic_file(path: Path, load: list[str] | None, field_sep: str = "\t",
                     dictionary: Iterable[str] = ()) -> AtomicFile:
    """Read the ``load`` columns (all when None); columns in ``dictionary`` come back dictionary-encoded.

    ``token_seq`` / ``float_seq`` columns stay strings (split on ``seq_separator`` where used).
    Errors name the file, line and column.
    """
    opts = _Options(path, load, field_sep, dictionary)
    try:
        table = pacsv.read_csv(path, read_options=opts.read, parse_options=opts.parse, convert_options=opts.convert)
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _locate(path, opts.names, opts.types, field_sep, str(exc)) from None
    if table.num_rows == 0:
        raise DataError(str(path), "the file has a header but no rows", line=2)
    return AtomicFile(path, {n: opts.types[n] for n in opts.wanted}, table.select(opts.wanted))


class _Options:
    """The reader options for the ``load`` columns of an atomic file (header checked first)."""

    def __init__(self, path: Path, load: list[str] | None, field_sep: str, dictionary: Iterable[str],
                 block_size: int | None = None) -> None:
        self.names, self.types = read_header(path, field_sep)
        self.wanted = self.names if load is None else list(load)
        for name in self.wanted:
            if name not in self.types:
                raise DataError(str(path), f"load_col asks for field {name!r}, which the file does not have "
                                f"(it has: {', '.join(self.names)})", line=1, column=name,
                                hint="fix load_col in the config or the file's header")
        if len(field_sep) != 1:
            raise DataError(str(path), f"field_separator {field_sep!r} must be one character", line=1,
                            hint="set field_separator to a single character such as a tab")
        dict_cols = set(dictionary)
        col_types = {n: (pa.dictionary(pa.int32(), pa.string()) if n in dict_cols and self.types[n] == "token"
                         else _ARROW_TYPES[self.types[n]]) for n in self.wanted}
        # Streaming: one thread (on a busy 2-core box the threaded reader was 2x slower in wall time).
        self.read = pacsv.ReadOptions(skip_rows=1, column_names=self.names,
                                      **({"block_size": block_size, "use_threads": False} if block_size else {}))
        # Atomic files have no quoting: a '"' in a title is an ordinary character. A bad row is an
        # error (``_locate`` then names its line).
        self.parse = pacsv.ParseOptions(delimiter=field_sep, quote_char=False, escape_char=False,
                                        invalid_row_handler=lambda row: "error")
        self.convert = pacsv.ConvertOptions(include_columns=self.wanted, column_types=col_types,
                                            null_values=[], strings_can_be_null=False)


# Streamed blocks: the reader's own buffers grow with the block (~40 MB of Arrow memory at 1 MB,
# ~150 MB at 4 MB, measured at 10M rows) and more blocks only mean more dictionary merges.
STREAM_BLOCK = 1 << 20
# Per-block dictionary entries collected before they are merged into one (and the codes so far remapped).
MERGE_ENTRIES = 1 << 20
POOL = pa.default_memory_pool


@dataclass
class AtomicColumns:
    """Columns of an atomic file as NumPy arrays: ``float`` columns as float64, ``dictionary`` columns
    as int32 codes into ``dictionaries[name]`` (each distinct value once)."""

    arrays: dict[str, np.ndarray]
    dictionaries: dict[str, pa.Array]


def read_atomic_columns(path: Path, load: list[str] | None, keep: Iterable[str], field_sep: str = "\t",
                        dictionary: Iterable[str] = ()) -> AtomicColumns:
    """Stream the file block by block into NumPy: the ``keep`` columns (of ``load``, which are all
    parsed and checked) come back as arrays, no Arrow table of the whole file ever exists.

    The peak is the arrays themselves plus one block, where ``read_atomic_file`` holds the whole
    table, its per-block dictionaries and then the NumPy copies: 10M rows cost ~250 MB less.
    """
    dict_cols = [c for c in dictionary]
    opts = _Options(path, load, field_sep, dict_cols, STREAM_BLOCK)
    keep = [c for c in keep if c in opts.wanted]
    cols = {c: _Growing(np.int32 if c in dict_cols else np.float64) for c in keep}
    merged = {c: _Dictionary() for c in keep if c in dict_cols}
    size = path.stat().st_size
    try:
        for batch in pacsv.open_csv(path, read_options=opts.read, parse_options=opts.parse,
                                    convert_options=opts.convert, memory_pool=POOL()):
            for c in keep:
                col = batch.column(c)
                # written straight into the result: no per-block NumPy temporaries to fragment the heap
                into = cols[c].extend(len(col), size)
                if c in merged:
                    np.add(col.indices.to_numpy(zero_copy_only=False), merged[c].entries, out=into, casting="unsafe")
                    merged[c].add(col.dictionary, cols[c])
                else:
                    into[:] = col.to_numpy(zero_copy_only=False)
            del batch, col
            # mimalloc keeps freed blocks resident: hand each block's pages back (~1 ms)
            pa.default_memory_pool().release_unused()
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        if "Empty CSV file" not in str(exc):
            raise _locate(path, opts.names, opts.types, field_sep, str(exc)) from None
    arrays = {c: g.result() for c, g in cols.items()}
    if not keep or not len(next(iter(arrays.values()))):
        raise DataError(str(path), "the file has a header but no rows", line=2)
    dicts = {}
    for c, d in merged.items():
        dicts[c] = d.merge(cols[c])
    return AtomicColumns(arrays, dicts)


class _Growing:
    """An array filled block by block; its capacity is guessed from the first block's bytes per row
    (untouched capacity is address space, not resident memory) and grown if the guess was short."""

    def __init__(self, dtype: type) -> None:
        self.buf, self.n, self.dtype = np.empty(0, dtype), 0, dtype

    def extend(self, k: int, file_size: int) -> np.ndarray:
        """The next ``k`` slots, to be written by the caller."""
        if self.n + k > len(self.buf):
            guess = int(file_size / STREAM_BLOCK * k * 1.2) if not self.n else int(len(self.buf) * 1.5)
            grown = np.empty(max(guess, self.n + k), self.dtype)
            grown[:self.n] = self.buf[:self.n]
            self.buf = grown
        self.n += k
        return self.buf[self.n - k:self.n]

    def result(self) -> np.ndarray:
        return self.buf[:self.n]


class _Dictionary:
    """Per-block dictionaries -> one: a block's codes are offsets into the concatenation of the blocks'
    dictionaries, and every ``MERGE_ENTRIES`` entries the concatenation is deduplicated (one hash
    pass in Arrow) and the codes written so far remapped, so it never grows past that."""

    def __init__(self) -> None:
        self.parts: list[pa.Array] = []
        self.entries = 0

    def add(self, dictionary: pa.Array, written: _Growing) -> None:
        self.parts.append(dictionary)
        self.entries += len(dictionary)
        if self.entries > MERGE_ENTRIES:
            self._dedup(written.result())

    def _dedup(self, codes: np.ndarray) -> None:
        enc = pc.dictionary_encode(pa.concat_arrays(self.parts))
        self.parts = [enc.dictionary]
        self.entries = len(enc.dictionary)
        remap = enc.indices.to_numpy(zero_copy_only=False)
        del enc
        for a in range(0, len(codes), 1 << 20):  # in blocks: no temporary the size of the column
            codes[a:a + (1 << 20)] = remap[codes[a:a + (1 << 20)]]

    def merge(self, written: _Growing) -> pa.Array:
        if len(self.parts) > 1:
            self._dedup(written.result())
        return self.parts[0] if self.parts else pa.array([], pa.string())


def _data_lines(path: Path) -> Iterable[tuple[int, bytes]]:
    with open(path, "rb") as f:
        next(f, None)
        for lineno, raw in enumerate(f, start=2):
            raw = raw.rstrip(b"\r\n")
            if raw:
                yield lineno, raw


def _locate(path: Path, names: list[str], types: dict[str, str], field_sep: str, arrow_msg: str) -> DataError:
    """Arrow said no; walk the file once to say where (only ever runs on a broken file)."""
    sep = field_sep.encode()
    m = _BAD_COLUMN.search(arrow_msg)
    bad_col = names[int(m.group(1))] if m and int(m.group(1)) < len(names) else None
    for lineno, raw in _data_lines(path):
        try:
            parts = raw.decode("utf-8").split(field_sep)
        except UnicodeDecodeError as exc:
            return DataError(str(path), f"not UTF-8 text ({exc.reason})", line=lineno)
        if raw.count(sep) + 1 != len(names):
            return DataError(str(path), f"expected {len(names)} columns, found {len(parts)}", line=lineno)
        for name in [bad_col] if bad_col else [n for n in names if types[n] == "float"]:
            value = parts[names.index(name)]
            try:
                float(value)
            except ValueError:
                return DataError(str(path), f"{value!r} is not a number", line=lineno, column=name)
    return DataError(str(path), f"cannot be read: {arrow_msg}")
