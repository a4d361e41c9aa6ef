"""MovieLens -> RecBole atomic files, imported from disk (data.movielens_fetch downloads and falls back).

Three layouts are understood, by file name inside a folder or by content for a single file:

* ml-100k ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``; ``u.item`` (``|``-separated, Latin-1,
  19 genre flags named in ``u.genre``); ``u.user`` (``id|age|gender|occupation|zip``).
* ml-1m ``ratings.dat``: ``user::item::rating::timestamp``; ``movies.dat`` (``id::Title (Year)::A|B``);
  ``users.dat`` (``id::gender::age::occupation::zip``).
* ml-latest / ml-25m ``ratings.csv`` with header ``userId,movieId,rating,timestamp``; ``movies.csv``.

The output mirrors RecBole's ml-100k files: ``<name>.inter`` (``user_id:token item_id:token
rating:float timestamp:float``, rows in source order), ``<name>.item`` (``item_id:token
movie_title:token_seq release_year:token class:token_seq``, the year taken out of the title) and
``<name>.user`` (``user_id:token age:token gender:token occupation:token zip_code:token``).
Everything is written to a temporary folder and renamed into place at the end.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mlconnect.data.synth import staging_dir
from mlconnect.errors import DataError, MlconnectError
from mlconnect.fileio import fsync_dir

RATINGS_FILES = ("u.data", "ratings.dat", "ratings.csv")
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
USER_HEADER = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n"
ML100K_GENRES = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                 "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                 "Romance", "Sci-Fi", "Thriller", "War", "Western")
_YEAR = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)")
_DATE_YEAR = re.compile(r"(\d{4})\s*$")


def _clean(text: str) -> str:
    """One atomic-file field: no tabs or newlines, single spaces (RecBole splits token_seq on ' ')."""
    return " ".join(text.split())


def _lines(path: Path, *, latin1_fallback: bool = False) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, decoded as UTF-8 (or Latin-1 where MovieLens uses it)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                if not latin1_fallback:
                    raise DataError(str(path), "not UTF-8 text", line=lineno) from None
                text = raw.decode("latin-1")
            text = text.rstrip("\r\n")
            if text.strip():
                yield lineno, text


def _sniff(path: Path) -> str:
    """Which layout a ratings file has: '100k' (tabs), '1m' ('::') or 'csv' (header userId,...)."""
    for _, first in _lines(path):
        if first.replace(" ", "").replace('"', "").lower().startswith("userid,movieid,rating"):  # R / pyarrow quote it
            return "csv"
        if "::" in first:
            return "1m"
        if "\t" in first:
            return "100k"
        raise DataError(str(path), "not a MovieLens ratings file (expected u.data, ratings.dat or "
                        "ratings.csv: 'user item rating timestamp' rows)", line=1,
                        hint="point at the folder holding u.data, ratings.dat or ratings.csv")
    raise DataError(str(path), "the file is empty", hint="download the dataset again")


def locate_ratings(src: Path) -> tuple[Path, str]:
    """The ratings file at ``src`` (a file, its folder, or a folder holding that folder) and its layout."""
    src = Path(src).expanduser()
    if not src.exists():
        raise MlconnectError(f"{src} does not exist",
                             "give the MovieLens folder (with u.data, ratings.dat or ratings.csv) "
                             "or one of those files")
    if src.is_file():
        return src, _sniff(src)
    candidates = [src, *sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))]
    for folder in candidates:
        for fname in RATINGS_FILES:
            if (folder / fname).is_file():
                return folder / fname, _sniff(folder / fname)
    raise MlconnectError(f"{src} holds no u.data, ratings.dat or ratings.csv",
                         "give the unzipped MovieLens folder (ml-100k, ml-1m, ml-latest-small, ...)")


def _default_name(ratings: Path, kind: str) -> str:
    parent = ratings.parent.name
    if parent.startswith("ml-"):
        return parent
    return {"100k": "ml-100k", "1m": "ml-1m", "csv": "ml-latest"}[kind]


def _convert_ratings(path: Path, kind: str, out: IO[str]) -> tuple[int, int, int]:
    """Stream ratings into ``out``; return (interactions, users, items). Bad rows raise DataError."""
    users: set[str] = set()
    items: set[str] = set()
    n = 0
    sep = {"100k": "\t", "1m": "::", "csv": ","}[kind]
    buf: list[str] = []
    for lineno, line in _lines(path):
        if kind == "csv" and n == 0 and line.lstrip('"').lower().startswith("userid"):
            continue  # the header
        parts = line.split(sep) if kind != "100k" else line.split()
        if len(parts) != 4:
            raise DataError(str(path), f"expected 4 fields (user, item, rating, timestamp) separated by "
                            f"{sep!r}, found {len(parts)}", line=lineno)
        user, item, rating, ts = (p.strip() for p in parts)
        if not user or not item or any(c.isspace() for c in user + item):
            raise DataError(str(path), "empty or blank user/item id", line=lineno)
        try:
            r = float(rating)
        except ValueError:
            raise DataError(str(path), f"rating {rating!r} is not a number", line=lineno,
                            column="rating") from None
        try:
            t = float(ts)
        except ValueError:
            raise DataError(str(path), f"timestamp {ts!r} is not a number", line=lineno,
                            column="timestamp") from None
        if not (math.isfinite(r) and math.isfinite(t)):
            raise DataError(str(path), "rating and timestamp must be finite numbers", line=lineno)
        users.add(user)
        items.add(item)
        buf.append(f"{user}\t{item}\t{rating}\t{ts}\n")
        n += 1
        if len(buf) >= 65536:
            out.writelines(buf)
            buf.clear()
    out.writelines(buf)
    if n == 0:
        raise DataError(str(path), "no ratings in the file", hint="download the dataset again")
    return n, len(users), len(items)


def _title_year(title: str, date: str = "") -> tuple[str, str]:
    """'Toy Story (1995)' -> ('Toy Story', '1995'); the release date's year when the title has none."""
    title = _clean(title)
    years = list(_YEAR.finditer(title))
    if years:  # the last "(1995)" is the year, even before a suffix like "(V)"
        m = years[-1]
        return _clean(title[:m.start()] + " " + title[m.end():]), m.group(1)
    d = _DATE_YEAR.search(date.strip())
    return title, d.group(1) if d else "unknown"


def _ml100k_genres(folder: Path) -> list[str]:
    path = folder / "u.genre"
    if not path.is_file():
        return list(ML100K_GENRES)
    genres: dict[int, str] = {}
    for lineno, line in _lines(path, latin1_fallback=True):
        name, sep, idx = line.rpartition("|")
        if not sep or not idx.strip().isdigit():
            raise DataError(str(path), "expected 'genre|index'", line=lineno)
        genres[int(idx)] = name.strip()
    return [genres.get(i, f"genre{i}") for i in range(max(genres) + 1)] if genres else list(ML100K_GENRES)


def _items(folder: Path, kind: str) -> Iterator[tuple[str, str, str, str]]:
    """(item id, title, year, genres) from the item file beside the ratings, if there is one."""
    if kind == "100k" and (folder / "u.item").is_file():
        path, genres = folder / "u.item", _ml100k_genres(folder)
        for lineno, line in _lines(path, latin1_fallback=True):
            parts = line.split("|")
            if len(parts) < 5 + len(genres):
                raise DataError(str(path), f"expected {5 + len(genres)} '|'-separated fields, "
                                f"found {len(parts)}", line=lineno)
            flags = parts[5:5 + len(genres)]
            if any(f.strip() not in ("0", "1") for f in flags):
                raise DataError(str(path), "genre flags must be 0 or 1", line=lineno)
            title, year = _title_year(parts[1], parts[2])
            yield parts[0].strip(), title, year, " ".join(g for g, f in zip(genres, flags, strict=True)
                                                           if f.strip() == "1")
    elif kind == "1m" and (folder / "movies.dat").is_file():
        path = folder / "movies.dat"
        for lineno, line in _lines(path, latin1_fallback=True):
            parts = line.split("::")
            if len(parts) != 3:
                raise DataError(str(path), f"expected 'id::title::genres', found {len(parts)} fields",
                                line=lineno)
            title, year = _title_year(parts[1])
            yield parts[0].strip(), title, year, _clean(parts[2].replace("|", " "))
    elif kind == "csv" and (folder / "movies.csv").is_file():
        path = folder / "movies.csv"
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            for row in reader:
                lineno = reader.line_num
                if lineno == 1 and row and row[0].strip().lower() == "movieid":
                    continue
                if not row:
                    continue
                if len(row) != 3:
                    raise DataError(str(path), f"expected movieId,title,genres, found {len(row)} fields",
                                    line=lineno)
                title, year = _title_year(row[1])
                genres = "" if row[2].strip() == "(no genres listed)" else _clean(row[2].replace("|", " "))
                yield row[0].strip(), title, year, genres


def _users(folder: Path, kind: str) -> Iterator[tuple[str, str, str, str, str]]:
    """(user id, age, gender, occupation, zip) from u.user or users.dat, if present."""
    if kind == "100k" and (folder / "u.user").is_file():
        path, sep, order = folder / "u.user", "|", (0, 1, 2, 3, 4)
    elif kind == "1m" and (folder / "users.dat").is_file():
        path, sep, order = folder / "users.dat", "::", (0, 2, 1, 3, 4)  # id::gender::age::occ::zip
    else:
        return
    for lineno, line in _lines(path, latin1_fallback=True):
        parts = line.split(sep)
        if len(parts) != 5:
            raise DataError(str(path), f"expected 5 {sep!r}-separated fields, found {len(parts)}",
                            line=lineno)
        yield tuple(_clean(parts[i]) for i in order)  # type: ignore[misc]


def _write_dataset(tmp: Path, name: str, ratings: Path, kind: str) -> tuple[int, int, int]:
    """Write <name>.inter (and .item / .user when their sources exist) into ``tmp``."""
    folder = ratings.parent
    with open(tmp / f"{name}.inter", "w", encoding="utf-8", newline="\n") as out:
        out.write(INTER_HEADER)
        counts = _convert_ratings(ratings, kind, out)
    for suffix, header, rows in ((".item", ITEM_HEADER, _items(folder, kind)),
                                 (".user", USER_HEADER, _users(folder, kind))):
        first = next(rows, None)
        if first is not None:
            with open(tmp / f"{name}{suffix}", "w", encoding="utf-8", newline="\n") as out:
                out.write(header)
                out.writelines("\t".join(row) + "\n" for row in itertools.chain([first], rows))
    return counts


def import_movielens(src: str | os.PathLike[str], out_dir: str | os.PathLike[str], name: str | None = None,
                     *, overwrite: bool = False, stats: dict[str, int] | None = None) -> Path:
    """Convert a MovieLens download at ``src`` into ``out_dir/<name>/`` atomic files; return that folder.

    ``src`` is ``u.data`` / ``ratings.dat`` / ``ratings.csv`` or the folder holding it; the item and
    user files beside it are converted too. ``name`` defaults to the source folder's name when it
    starts with ``ml-`` (else ml-100k / ml-1m / ml-latest). Malformed lines raise ``DataError``
    naming the file and line; nothing is left at the destination in that case. A ``stats`` dict,
    when given, receives ``interactions``, ``users`` and ``items`` counted from the ratings.

    When ``out_dir/<name>`` *is* the source folder (GroupLens' zip unpacked straight into the data
    path), the atomic files are added beside the raw ones, each renamed into place (``.inter``
    last), and the raw files are kept.
    """
    ratings, kind = locate_ratings(Path(src))
    name = name or _default_name(ratings, kind)
    final = Path(out_dir) / name
    if final.is_dir() and final.resolve() == ratings.parent.resolve():
        if (final / f"{name}.inter").exists() and not overwrite:
            raise MlconnectError(f"{final / (name + '.inter')} already exists",
                                 "pass --force to convert again")
        with tempfile.TemporaryDirectory(prefix=".mlconnect-import-", dir=final) as tmp_name:
            tmp = Path(tmp_name)
            n, n_users, n_items = _write_dataset(tmp, name, ratings, kind)
            for suffix in (".item", ".user", ".inter"):  # .inter last: its presence means complete
                part = tmp / f"{name}{suffix}"
                if part.exists():
                    with open(part, "rb") as fh:
                        os.fsync(fh.fileno())
                    os.replace(part, final / part.name)
            fsync_dir(final)
    else:
        with staging_dir(Path(out_dir), name, overwrite=overwrite) as tmp:
            n, n_users, n_items = _write_dataset(tmp, name, ratings, kind)
    if stats is not None:
        stats.update(interactions=n, users=n_users, items=n_items)
    return final


# ---------------------------------------------------------------------------------------- download
