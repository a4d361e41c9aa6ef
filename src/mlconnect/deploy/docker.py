"""``mlconnect export --docker``: a Dockerfile and a pinned requirements.txt for the bundle server.

The image holds Python, ONNX Runtime, numpy, FastAPI and uvicorn, the mlconnect wheel installed
without its dependencies (so no torch), and the bundle as its working directory. The pins are the
versions installed where the export runs (the ones the export verified against), closed over their
own dependencies, so a rebuild next month installs the same code. The Dockerfile and requirements.txt
are the user's to edit (card.json has no digest for them, so the server still starts); the wheel,
the server's code, keeps its digest.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from mlconnect import __version__
from mlconnect.deploy.bundle import DOCKERFILE, REQUIREMENTS
from mlconnect.errors import MlconnectError
from mlconnect.fileio import atomic_write_text

SERVER_PACKAGES = ("onnxruntime", "numpy", "fastapi", "uvicorn")  # what deploy/server.py imports
PORT = 8000
# The container's command; ${HOST}/${PORT} come from ENV below (docker run -e PORT=9000 changes them).
CMD = 'exec python -m mlconnect.deploy.server --bundle . --bind "$HOST" --port "$PORT"'
HEALTH = ("import os,urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:%s/health' % os.environ['PORT'], "
          "headers={'X-API-Key': os.environ.get('MLCONNECT_API_KEY', '')}), timeout=4)")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_closure(roots: tuple[str, ...] = SERVER_PACKAGES) -> dict[str, str]:
    """``{name: version}`` of ``roots`` and everything they require here (markers evaluated, extras off)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging comes with setuptools, onnxruntime and pip installs
        raise MlconnectError("--docker needs the 'packaging' module to read dependency metadata",
                             "pip install packaging") from None
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = _canon(todo.pop())
        if name in found:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            if name in roots:
                raise MlconnectError(f"--docker pins the installed {name}, which is not installed here",
                                     "pip install 'mlconnect[deploy,serve]'") from None
            continue
        found[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dict(sorted(found.items()))


def dockerfile(wheel: str | None) -> str:
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    install = f"./{wheel}" if wheel else f"mlconnect=={__version__}"
    copy = f"COPY requirements.txt {wheel} /tmp/install/" if wheel else "COPY requirements.txt /tmp/install/"
    return f"""# Written by `mlconnect export --docker`: the bundle's recommendation API, without torch.
#   docker build -t recs . && docker run -p 8000:8000 -e MLCONNECT_API_KEY=... recs
FROM python:{py}-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOST=0.0.0.0 PORT={PORT}
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin mlconnect
{copy}
WORKDIR /tmp/install
RUN pip install --no-cache-dir -r requirements.txt && pip install --no-cache-dir --no-deps {install} \\
    && rm -rf /tmp/install
WORKDIR /bundle
COPY . /bundle
USER mlconnect
EXPOSE {PORT}
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD python -c "{HEALTH}"
CMD {CMD}
"""


def write_docker_files(folder: Path, log: Callable[[str], None] = lambda _m: None) -> None:
    """requirements.txt, the mlconnect wheel (from this checkout; else pinned by version) and the Dockerfile."""
    pins = pinned_closure()
    atomic_write_text(folder / REQUIREMENTS,
                      "# the bundle server's dependencies, pinned to the versions the export ran with\n"
                      + "".join(f"{n}=={v}\n" for n, v in pins.items()))
    from mlconnect.remote.wheel import build_wheel, find_source_root

    root, wheel = find_source_root(), None
    if root is not None:
        path, _build, _cached = build_wheel(root, log=log)
        wheel = path.name
        (folder / wheel).write_bytes(path.read_bytes())
    else:
        log(f"installed from a wheel: the Dockerfile installs mlconnect=={__version__} from the package index")
    atomic_write_text(folder / DOCKERFILE, dockerfile(wheel))
