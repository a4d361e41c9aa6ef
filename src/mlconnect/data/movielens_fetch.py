"""MovieLens from GroupLens: download, check and unpack the zip, convert it (data.movielens), and
the quickstart's choice of dataset (found, downloaded, or synthetic)."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import IO

from mlconnect.data.movielens import import_movielens
from mlconnect.data.synth import generate
from mlconnect.errors import MlconnectError

DEFAULT_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
URL_ENV = "MLCONNECT_MOVIELENS_URL"
GROUPLENS = "https://files.grouplens.org/datasets/movielens/{name}.zip"  # DEFAULT_URL for ml-100k
MAX_UNZIPPED = 8 << 30  # refuse archives that claim to unpack to more than 8 GiB


def _manual_hint(name: str, data_path: Path) -> str:
    return (f"download {GROUPLENS.format(name=name)} yourself, unzip it, then run "
            f"`mlconnect data import-movielens <unzipped folder> --out {data_path}`")


def _download(url: str, dest: IO[bytes], timeout: float) -> None:
    # A plain opener honours http(s)_proxy/no_proxy like every other tool on the machine.
    req = urllib.request.Request(url, headers={"User-Agent": "mlconnect"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) URL by design
        shutil.copyfileobj(resp, dest, length=1 << 20)


def fetch_movielens(name: str = "ml-100k", data_path: str | os.PathLike[str] = "dataset",
                    url: str | None = None, timeout: float = 60.0, *, overwrite: bool = False,
                    stats: dict[str, int] | None = None) -> Path:
    """Download a GroupLens MovieLens zip and convert it into ``data_path/<name>/``; return that folder.

    The URL is ``url``, else ``$MLCONNECT_MOVIELENS_URL``, else GroupLens' ``<name>.zip``. The zip goes
    to a temporary folder, is checked, unpacked and converted with :func:`import_movielens`, so a
    failure at any step leaves nothing in ``data_path``. Any network problem is one
    ``MlconnectError`` that says how to get the data by hand. ``stats`` as in :func:`import_movielens`.
    """
    data_path = Path(data_path)
    url = url or os.environ.get(URL_ENV) or GROUPLENS.format(name=name)
    if not url.startswith(("http://", "https://", "file://")):
        raise MlconnectError(f"bad MovieLens URL {url!r}", "give an http(s) URL")
    if (data_path / name).exists() and not overwrite:
        raise MlconnectError(f"{data_path / name} already exists", "remove it first or use it as it is")
    with tempfile.TemporaryDirectory(prefix="mlconnect-movielens-") as tmp:
        archive = Path(tmp) / "download.zip"
        try:
            with open(archive, "wb") as f:
                _download(url, f, timeout)
        except urllib.error.HTTPError as exc:
            raise MlconnectError(f"could not download {name} from {url}: HTTP {exc.code} {exc.reason}",
                                 _manual_hint(name, data_path)) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise MlconnectError(f"could not download {name} from {url}: {reason}",
                                 _manual_hint(name, data_path)) from None
        if not zipfile.is_zipfile(archive):
            raise MlconnectError(f"could not download {name} from {url}: the response is not a zip archive",
                                 _manual_hint(name, data_path))
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as zf:
                _safe_extract(zf, unpacked)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise MlconnectError(f"could not unpack the {name} archive from {url}: {exc}",
                                 _manual_hint(name, data_path)) from None
        try:
            return import_movielens(unpacked, data_path, name=name, overwrite=overwrite, stats=stats)
        except MlconnectError as exc:
            raise MlconnectError(f"the {name} archive from {url} is not a MovieLens dataset: {exc.message}",
                                 _manual_hint(name, data_path)) from None


def _safe_extract(zf: zipfile.ZipFile, dest: Path) -> None:
    """Extract, refusing members that escape ``dest`` and archives that claim to be huge."""
    dest = dest.resolve()
    total = 0
    for info in zf.infolist():
        target = (dest / info.filename).resolve()
        if dest != target and dest not in target.parents:
            raise zipfile.BadZipFile(f"member {info.filename!r} points outside the archive folder")
        total += info.file_size
    if total > MAX_UNZIPPED:
        raise zipfile.BadZipFile(f"the archive unpacks to {total >> 30} GiB, more than expected")
    zf.extractall(dest)


# ---------------------------------------------------------------------------------------- quickstart


class QuickstartDataset(tuple):
    """``(data_path, dataset, source)`` as a plain 3-tuple, plus ``.reason``: one line for people."""

    reason: str

    def __new__(cls, data_path: Path, dataset: str, source: str, reason: str = "") -> QuickstartDataset:
        self = super().__new__(cls, (data_path, dataset, source))
        self.reason = reason
        return self

    @property
    def data_path(self) -> Path:
        return self[0]

    @property
    def dataset(self) -> str:
        return self[1]

    @property
    def source(self) -> str:
        return self[2]


def resolve_quickstart_dataset(data_path: str | os.PathLike[str], *, allow_download: bool = True,
                               url: str | None = None) -> QuickstartDataset:
    """Pick quickstart's dataset: ml-100k if present ("found"), else downloaded ("downloaded"),
    else a synthetic dataset generated into ``data_path/synthetic`` ("synthetic").

    Returns ``(data_path, dataset_name, source)``; ``.reason`` on the result says why, for the caller
    to print (this function prints nothing). GroupLens' raw files unpacked at ``data_path/ml-100k``
    are converted in place ("found"); a synthetic dataset already there is reused.
    """
    data_path = Path(data_path)
    inter = data_path / "ml-100k" / "ml-100k.inter"
    if inter.is_file():
        return QuickstartDataset(data_path, "ml-100k", "found", f"found {inter}")
    if (data_path / "ml-100k" / "u.data").is_file():  # GroupLens' zip unpacked into the data path
        try:
            import_movielens(data_path / "ml-100k", data_path, "ml-100k")
            return QuickstartDataset(data_path, "ml-100k", "found",
                                     f"found GroupLens' ml-100k in {data_path / 'ml-100k'} and converted it")
        except MlconnectError as exc:
            why = f"{exc.message}; using a synthetic dataset instead"
    elif allow_download:
        try:
            folder = fetch_movielens("ml-100k", data_path, url=url)
            used = url or os.environ.get(URL_ENV) or DEFAULT_URL
            return QuickstartDataset(data_path, "ml-100k", "downloaded",
                                     f"downloaded ml-100k from {used} into {folder}")
        except MlconnectError as exc:
            why = f"{exc.message}; using a synthetic dataset instead"
    else:
        why = "downloading is turned off; using a synthetic dataset instead"
    synth = data_path / "synthetic"
    if not (synth / "synthetic.inter").is_file():
        # replace only an empty leftover folder; anything else in it is someone's data
        generate(data_path, "synthetic", overwrite=synth.is_dir() and not any(synth.iterdir()))
    return QuickstartDataset(data_path, "synthetic", "synthetic", why)

