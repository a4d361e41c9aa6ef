"""The wheel `mlconnect bootstrap` ships: built here from the checkout this mlconnect runs from.

A build id, a hash of the files that go into the wheel, identifies that code: it is baked into the wheel
as ``mlconnect/_build.py`` (the host's agent reports it, so equal version strings with different code
are still told apart) and names the wheel cache, so a repeat with unchanged files builds nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import mlconnect
from mlconnect import __version__, baked_build_id
from mlconnect.errors import MlconnectError
from mlconnect.settings import tomllib

BUILD_MODULE = "_build.py"  # exists only in wheels built here; never in the source tree
WHEEL_TIMEOUT_S = 300
TOP_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in")
TOP_GLOBS = ("README*", "LICEN[CS]E*", "COPYING*")  # metadata and license files the backend reads

Log = Callable[[str], None]


def last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:") or ln.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:300]


def find_source_root() -> Path | None:
    """The checkout this mlconnect runs from (``<root>/src/mlconnect``), None when installed from a wheel."""
    pkg = Path(mlconnect.__file__).resolve().parent
    root = pkg.parent.parent
    if pkg.parent.name == "src" and (root / "pyproject.toml").is_file():
        return root
    return None


def source_files(root: Path) -> list[Path]:
    """What goes into the wheel, sorted: the build files and every file of src/mlconnect but caches."""
    files = [root / n for n in TOP_FILES if (root / n).is_file()]
    files += sorted(p for g in TOP_GLOBS for p in root.glob(g) if p.is_file())
    pkg = root / "src" / "mlconnect"
    files += sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                    and p.suffix not in (".pyc", ".pyo") and p.relative_to(pkg).as_posix() != BUILD_MODULE)
    return files


def source_hash(root: Path) -> str:
    """The build id: 16 hex digits of sha256 over the relative paths and contents of ``source_files``."""
    h = hashlib.sha256()
    for p in source_files(root):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@lru_cache(maxsize=1)
def local_build_id() -> str | None:
    """This process's build id: baked in (installed from a bootstrap wheel) or hashed from the checkout."""
    baked = baked_build_id()
    if baked:
        return baked
    root = find_source_root()
    return source_hash(root) if root else None


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlconnect"


def backend_available(root: Path) -> bool:
    """True when the project's build requirements are installed here, so pip can build offline."""
    try:
        build = tomllib.loads((root / "pyproject.toml").read_text()).get("build-system", {})
    except (OSError, tomllib.TOMLDecodeError):
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip's own copy; only the names are checked without it
        Requirement = None
    from importlib.metadata import PackageNotFoundError, version

    def have(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    for spec in build.get("requires", ["setuptools"]):
        name = re.split(r"[\s<>=!~;\[]", spec.strip(), maxsplit=1)[0]
        found = have(name)
        if name == "wheel" and not found:
            # setuptools >= 70.1 ships bdist_wheel itself; the separate wheel package is then optional
            st = have("setuptools")
            found = st if st and tuple(int(x) for x in re.findall(r"\d+", st)[:2]) >= (70, 1) else None
            if found:
                continue
        if not found:
            return False
        if Requirement is not None and not Requirement(spec).specifier.contains(found, prereleases=True):
            return False
    backend = str(build.get("build-backend", "setuptools.build_meta")).split(":")[0]
    return importlib.util.find_spec(backend.split(".")[0]) is not None


def wheel_argv(python: str, tree: Path, out: Path, *, isolated: bool) -> list[str]:
    """pip wheel for the copied source tree; without isolation when the backend is here (offline, fast)."""
    argv = [python, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "--no-input", "-q",
            "-w", str(out), str(tree)]
    if not isolated:
        argv.insert(4, "--no-build-isolation")
    return argv


def build_wheel(root: Path, *, cache: Path | None = None, log: Log = lambda _m: None) -> tuple[Path, str, bool]:
    """(wheel, build id, cached?) for the checkout at ``root``; a repeat with unchanged files builds nothing.

    The files are copied to a temp tree first: building in place would leave build/ and *.egg-info in
    the user's checkout, and the copy is exactly what was hashed.
    """
    build = source_hash(root)
    dest = (cache or cache_dir()) / "wheels" / build
    found = sorted(dest.glob("mlconnect-*.whl"))
    if found:
        return found[0], build, True
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".build-") as tmp:
        tree, out = Path(tmp) / "tree", Path(tmp) / "out"
        for p in source_files(root):
            rel = p.relative_to(root)
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, tree / rel)
        (tree / "src" / "mlconnect" / BUILD_MODULE).write_text(
            f'"""Written by `mlconnect bootstrap`: which source files this wheel was built from."""\n\n'
            f'SOURCE_HASH = "{build}"\n')
        isolated = not backend_available(root)
        log(f"building the mlconnect {__version__} wheel (build {build})"
            + (" with build isolation (fetches the build backend)" if isolated else ""))
        argv = wheel_argv(sys.executable, tree, out, isolated=isolated)
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=WHEEL_TIMEOUT_S,
                                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise MlconnectError(f"building the mlconnect wheel took more than {WHEEL_TIMEOUT_S} s",
                                 "with build isolation pip downloads setuptools: check the network, or "
                                 "`pip install setuptools wheel` here to build offline") from None
        wheels = sorted(out.glob("mlconnect-*.whl"))
        if cp.returncode != 0 or not wheels:
            raise MlconnectError(f"building the mlconnect wheel failed: {last_error(cp.stderr + cp.stdout)}",
                                 f"run `{shlex.join(argv[:-1] + [str(root)])}` to see why")
        dest.mkdir(exist_ok=True)
        final = dest / wheels[0].name
        os.replace(wheels[0], final)
    return final, build, False
