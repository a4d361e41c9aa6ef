"""Bytes of a text input (plain, gzip or zstd): its first lines, all its lines, and read errors in words."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from mlconnect.data.atomic import BOM
from mlconnect.errors import DataError

HEAD_MAX = 64 << 20  # the longest first line looked at to find the format and column names


def arrow_problem(exc: Exception, compression: str | None) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if compression and ("runcated" in text or "inflate" in text or "compressed" in text.lower()):
        return f"the {compression} stream is truncated or corrupt ({text})"
    return f"cannot be read: {text}"


def head_lines(path: Path, compression: str | None, n: int = 20) -> list[str]:
    """The first ``n`` non-blank lines, from the first 64 KiB, or up to 64 MiB when the first line is longer."""
    try:
        with pa.input_stream(str(path), compression=compression) as f:
            head = f.read(1 << 16)
            eof = len(head) < 1 << 16
            # A JSON record with a long review can fill the sample: read on to the end of that line.
            while not eof and len(head) < HEAD_MAX and b"\n" not in head.lstrip(b"\r\n"):
                more = f.read(len(head))
                eof = len(more) < len(head)
                head += more
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataError(str(path), arrow_problem(exc, compression), hint="export or download it again") from None
    head = head.removeprefix(BOM)
    lines = head.decode("utf-8", errors="replace").splitlines()
    if not eof and lines:
        lines = lines[:-1]  # the last line may be cut
    return [line for line in lines if line.strip()][:n]


def lines(f: pa.NativeFile) -> Iterator[bytes]:
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
