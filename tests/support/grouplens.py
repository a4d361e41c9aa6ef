"""GroupLens' raw ml-100k layout (u.data, u.item in Latin-1, u.user, u.genre), made up, for the tests of
import and download mechanics: they run on a fresh clone without ../shared. The RecBole-equality test
of the conversion still rebuilds the raw files from the real ml-100k."""

from __future__ import annotations

from pathlib import Path

from mlconnect.data.movielens import ML100K_GENRES

N_USERS, N_ITEMS = 943, 1682  # ml-100k's sizes, so counts read the same as on the real files
OCCUPATIONS = ("technician", "writer", "educator", "student", "engineer", "other")


def write_raw_ml100k(dest: Path, n_ratings: int) -> Path:
    """``dest/u.data`` (n_ratings lines, tab-separated), ``u.item`` (item 1 is Toy Story, as in the real
    file), ``u.user`` and ``u.genre``, deterministic; returns ``dest``."""
    dest.mkdir(parents=True)
    ratings = [f"{k % N_USERS + 1}\t{(k * 7919) % N_ITEMS + 1}\t{k % 5 + 1}\t{874724710 + 97 * k}\n"
               for k in range(n_ratings)]
    (dest / "u.data").write_text("".join(ratings))
    items = []
    for i in range(1, N_ITEMS + 1):
        title, year = ("Toy Story", 1995) if i == 1 else (f"Film n\u00b0{i}", 1930 + i % 68)  # n°: Latin-1
        genres = {"Animation", "Children's", "Comedy"} if i == 1 else {ML100K_GENRES[1 + i % 18]}
        flags = "|".join("1" if g in genres else "0" for g in ML100K_GENRES)
        items.append(f"{i}|{title} ({year})|01-Jan-{year}||http://example.invalid/{i}|{flags}\n")
    (dest / "u.item").write_bytes("".join(items).encode("latin-1"))
    (dest / "u.user").write_text("".join(f"{u}|{18 + u % 50}|{'MF'[u % 2]}|{OCCUPATIONS[u % 6]}|{10000 + u}\n"
                                         for u in range(1, N_USERS + 1)))
    (dest / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n")
    return dest
