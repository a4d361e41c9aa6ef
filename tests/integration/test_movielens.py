"""MovieLens import and download: real files, a real HTTP server on 127.0.0.1, no internet."""

from __future__ import annotations

import functools
import http.server
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from mlconnect.data.movielens import ML100K_GENRES, import_movielens
from mlconnect.data.movielens_fetch import URL_ENV, fetch_movielens, resolve_quickstart_dataset
from mlconnect.errors import DataError, MlconnectError
from support.grouplens import write_raw_ml100k

# RecBole's own ml-100k.item has two rows its converter got wrong: item 267 ("unkonwn" title and
# year where u.item says title "unknown", no date) and 1412 (year "V" from a "(1995) (V)" title).
RECBOLE_ITEM_QUIRKS = {"267", "1412"}


def _parse(path: Path) -> tuple[list[str], list[list[str]]]:
    """A strict atomic-file read: name:type header, same column count on every row."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    assert all(":" in h and h.split(":")[1] in ("token", "float", "token_seq") for h in header)
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == len(header) for r in rows)
    for h_i, h in enumerate(header):
        if h.endswith(":float"):
            for r in rows:
                float(r[h_i])
    return header, rows


def _raw_ml100k(shared: Path, dest: Path, n_ratings: int | None = None) -> Path:
    """Rebuild GroupLens' raw ml-100k files (u.data, u.item in Latin-1, u.user, u.genre) from RecBole's."""
    dest.mkdir(parents=True)
    inter = (shared / "ml-100k.inter").read_text().splitlines()[1:]
    if n_ratings:
        inter = inter[:n_ratings]
    (dest / "u.data").write_text("".join(line + "\n" for line in inter))
    items = []
    for line in (shared / "ml-100k.item").read_text(encoding="utf-8").splitlines()[1:]:
        iid, title, year, classes = line.split("\t")
        flags = ["1" if g in classes.split(" ") else "0" for g in ML100K_GENRES]
        items.append(f"{iid}|{title} ({year})|01-Jan-{year}||http://example.invalid/|{'|'.join(flags)}\n")
    (dest / "u.item").write_bytes("".join(items).encode("latin-1"))
    users = [line.replace("\t", "|") + "\n"
             for line in (shared / "ml-100k.user").read_text().splitlines()[1:]]
    (dest / "u.user").write_text("".join(users))
    (dest / "u.genre").write_text("".join(f"{g}|{i}\n" for i, g in enumerate(ML100K_GENRES)) + "\n")
    return dest


def test_ml100k_conversion_matches_recbole(datasets_dir, tmp_path):
    shared = datasets_dir / "ml-100k"
    raw = _raw_ml100k(shared, tmp_path / "raw" / "ml-100k")
    stats: dict[str, int] = {}
    out = import_movielens(raw, tmp_path / "data", stats=stats)
    assert out == tmp_path / "data" / "ml-100k"
    assert stats == {"interactions": 100_000, "users": 943, "items": 1682}
    assert (out / "ml-100k.inter").read_bytes() == (shared / "ml-100k.inter").read_bytes()
    assert (out / "ml-100k.user").read_bytes() == (shared / "ml-100k.user").read_bytes()
    ours = (out / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    theirs = (shared / "ml-100k.item").read_text(encoding="utf-8").splitlines()
    assert ours[0] == theirs[0] and len(ours) == len(theirs)
    differ = {a.split("\t")[0] for a, b in zip(ours, theirs, strict=True) if a != b}
    assert differ == RECBOLE_ITEM_QUIRKS
    assert "1412\tLand Before Time III: The Time of the Great Giving (V)\t1995\tAnimation Children's" in ours
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ml-100k"]


def test_ml1m_and_latest_layouts(tmp_path):
    ml1m = tmp_path / "ml-1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (ml1m / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                      "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
                                      "3::Cité des enfants perdus, La (1995)::Adventure|Sci-Fi\n"
                                      .encode("latin-1"))
    (ml1m / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    out = import_movielens(ml1m / "ratings.dat", tmp_path / "data")
    assert out.name == "ml-1m"
    header, rows = _parse(out / "ml-1m.inter")
    assert rows[0] == ["1", "1193", "5", "978300760"]
    _, items = _parse(out / "ml-1m.item")
    assert items[1] == ["661", "James and the Giant Peach", "1996", "Animation Children's Musical"]
    assert items[2][1] == "Cité des enfants perdus, La"
    _, users = _parse(out / "ml-1m.user")
    assert users[0] == ["1", "1", "F", "10", "48067"]  # reordered to RecBole's age, gender, occupation

    latest = tmp_path / "ml-latest-small"
    latest.mkdir()
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n"
                                        "1,3,3.5,964981247\n")
    (latest / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                       '3,"American President, The (1995)",(no genres listed)\n')
    out = import_movielens(latest, tmp_path / "data", name="small")
    _, rows = _parse(out / "small.inter")
    assert rows == [["1", "1", "4.0", "964982703"], ["1", "3", "3.5", "964981247"]]
    _, items = _parse(out / "small.item")
    assert items == [["1", "Toy Story", "1995", "Adventure Animation"],
                     ["3", "American President, The", "1995", ""]]
    assert not (out / "small.user").exists()


@pytest.mark.parametrize("content, line, what", [
    ("1\t2\t3\t881250949\n1\t2\t3\n", 2, "expected 4 fields"),
    ("1\t2\t3\t881250949\n\n1\t5\tfive\t881250949\n", 3, "rating 'five'"),
    ("1\t2\t3\tyesterday\n", 1, "timestamp 'yesterday'"),
])
def test_malformed_lines_name_file_and_line(tmp_path, content, line, what):
    src = tmp_path / "ml-100k"
    src.mkdir()
    (src / "u.data").write_text(content)
    with pytest.raises(DataError) as info:
        import_movielens(src, tmp_path / "data")
    assert info.value.line == line and what in str(info.value)
    assert str(src / "u.data") in str(info.value)
    assert list((tmp_path / "data").iterdir()) == []  # nothing half-written, no temp folder left


def test_bad_sources(tmp_path):
    with pytest.raises(MlconnectError, match="does not exist"):
        import_movielens(tmp_path / "nowhere", tmp_path / "data")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MlconnectError, match="no u.data, ratings.dat or ratings.csv"):
        import_movielens(tmp_path / "empty", tmp_path / "data")
    (tmp_path / "notes.txt").write_text("hello world\n")
    with pytest.raises(DataError, match="not a MovieLens ratings file"):
        import_movielens(tmp_path / "notes.txt", tmp_path / "data")
    (tmp_path / "blank.data").write_text("")
    with pytest.raises(DataError, match="empty"):
        import_movielens(tmp_path / "blank.data", tmp_path / "data")


def test_existing_destination_is_kept(tmp_path):
    src = tmp_path / "ml-100k"
    src.mkdir()
    (src / "u.data").write_text("1\t2\t3\t4\n")
    import_movielens(src, tmp_path / "data")
    (src / "u.data").write_text("1\t2\t3\t4\n5\t6\t7\t8\n")
    with pytest.raises(MlconnectError, match="already exists"):
        import_movielens(src, tmp_path / "data")
    assert len((tmp_path / "data/ml-100k/ml-100k.inter").read_text().splitlines()) == 2
    import_movielens(src, tmp_path / "data", overwrite=True)
    assert len((tmp_path / "data/ml-100k/ml-100k.inter").read_text().splitlines()) == 3


# ------------------------------------------------------------------------------------ download


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy in the environment must not intercept the loopback server; the URL env var neither.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", URL_ENV):
        monkeypatch.delenv(var, raising=False)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """Serves ml-100k.zip (GroupLens layout, 3000 ratings) and not-a-zip.zip from 127.0.0.1."""
    root = tmp_path / "www"
    raw = write_raw_ml100k(tmp_path / "zipsrc" / "ml-100k", n_ratings=3000)
    root.mkdir()
    with zipfile.ZipFile(root / "ml-100k.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("u.data", "u.item", "u.user", "u.genre"):
            zf.write(raw / name, f"ml-100k/{name}")
    (root / "not-a-zip.zip").write_text("<html>maintenance</html>")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/ml-100k.zip"


def test_fetch_from_local_server(server, tmp_path):
    out = fetch_movielens("ml-100k", tmp_path / "data", url=f"{server}/ml-100k.zip", timeout=10)
    assert out == tmp_path / "data" / "ml-100k"
    assert sorted(p.name for p in out.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    header, rows = _parse(out / "ml-100k.inter")
    assert header == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert len(rows) == 3000
    _, items = _parse(out / "ml-100k.item")
    assert items[0] == ["1", "Toy Story", "1995", "Animation Children's Comedy"]
    _, users = _parse(out / "ml-100k.user")
    assert len(users) == 943


def test_fetch_url_from_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(URL_ENV, f"{server}/ml-100k.zip")
    out = fetch_movielens("ml-100k", tmp_path / "data", timeout=10)
    assert (out / "ml-100k.inter").is_file()


@pytest.mark.parametrize("path", ["/missing.zip", "/not-a-zip.zip", None])
def test_fetch_failures_are_one_clear_error(server, tmp_path, path):
    url = _refused_url() if path is None else server + path
    data = tmp_path / "data"
    with pytest.raises(MlconnectError) as info:
        fetch_movielens("ml-100k", data, url=url, timeout=10)
    err = info.value
    assert err.message.startswith("could not download ml-100k from ") and url in err.message
    assert {None: "refused", "/missing.zip": "HTTP 404", "/not-a-zip.zip": "not a zip"}[path] in err.message
    assert "mlconnect data import-movielens" in err.hint
    assert not (data / "ml-100k").exists()
    assert not data.exists() or list(data.iterdir()) == []


def test_quickstart_found_downloaded_synthetic(server, tmp_path):
    url = f"{server}/ml-100k.zip"
    got = resolve_quickstart_dataset(tmp_path / "a", url=url)
    assert tuple(got) == (tmp_path / "a", "ml-100k", "downloaded") and url in got.reason
    data_path, name, source = resolve_quickstart_dataset(tmp_path / "a", url=url)
    assert (data_path, name, source) == (tmp_path / "a", "ml-100k", "found")

    got = resolve_quickstart_dataset(tmp_path / "b", url=_refused_url())
    assert tuple(got) == (tmp_path / "b", "synthetic", "synthetic")
    assert "could not download" in got.reason
    header, rows = _parse(tmp_path / "b" / "synthetic" / "synthetic.inter")
    assert len(rows) > 10_000 and not (tmp_path / "b" / "ml-100k").exists()

    got = resolve_quickstart_dataset(tmp_path / "c", allow_download=False, url=url)
    assert got.source == "synthetic" and "turned off" in got.reason
    assert (tmp_path / "c" / "synthetic" / "synthetic.item").is_file()


def test_grouplens_zip_unpacked_into_the_data_path(tmp_path):
    # `unzip ml-100k.zip -d dataset/` leaves dataset/ml-100k/u.data: convert beside the raw files.
    raw = write_raw_ml100k(tmp_path / "dataset" / "ml-100k", n_ratings=1000)
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    got = resolve_quickstart_dataset(tmp_path / "dataset", allow_download=False)
    assert tuple(got) == (tmp_path / "dataset", "ml-100k", "found") and "converted" in got.reason
    names = sorted(p.name for p in raw.iterdir())
    assert names == sorted([*before, "ml-100k.inter", "ml-100k.item", "ml-100k.user"])
    assert all((raw / n).read_bytes() == b for n, b in before.items())  # raw files kept as they were
    assert len((raw / "ml-100k.inter").read_text().splitlines()) == 1001
    with pytest.raises(MlconnectError, match="already exists"):
        import_movielens(raw, tmp_path / "dataset")
    import_movielens(raw, tmp_path / "dataset", overwrite=True)
    assert sorted(p.name for p in raw.iterdir()) == names  # no temp folder left behind


def test_broken_grouplens_folder_falls_back_to_synthetic(tmp_path):
    raw = tmp_path / "dataset" / "ml-100k"
    raw.mkdir(parents=True)
    (raw / "u.data").write_text("1\t2\t3\n")
    got = resolve_quickstart_dataset(tmp_path / "dataset", allow_download=False)
    assert got.source == "synthetic" and "u.data, line 1" in got.reason
    assert sorted(p.name for p in raw.iterdir()) == ["u.data"]
