"""Imports point one way (docs: ARCHITECTURE.md): a module that imports from a layer above it fails here.

Every import in src/mlconnect counts, at module level or inside a function (a deferred import is
still an arrow). Each top-level package or module of mlconnect must have a row in ``MAY_IMPORT``: a
new package is checked from its first commit, and one that is missing from the table fails the test
until its place is decided. ``data``, ``sweeps`` and ``deploy`` are in the table before they exist.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "mlconnect"

# The base: small modules everything may use. `_root` is mlconnect/__init__.py (version, build id); `wsl`
# is the std-lib-only WSL inspection the host agent and doctor share; `expstate` the std-lib-only
# experiment state (and time format) that every command reads, here and in the host agent; `interrupt`
# the std-lib-only SIGTERM-as-Ctrl-C guard that tunnels, export and predict share; `yamlload` YAML read as
# RecBole reads it (configs, sweep spaces).
BASE = frozenset({"_root", "_build", "errors", "fileio", "layout", "ports", "settings", "wsl", "expstate", "spec",
                  "interrupt", "yamlload"})

# What each part may import besides itself and BASE. The arrows of ARCHITECTURE.md:
#   data <- engine <- runs <- sweeps <- cli;  serving <- engine (and remote, to serve on a host);
#   setup uses remote;
#   remote is the transport: nothing ML-specific (it runs argv lists; it knows no runs or engine);
#   deploy.export / predict use engine; the bundle server uses neither engine nor torch (below).
MAY_IMPORT: dict[str, frozenset[str]] = {
    **{b: BASE for b in BASE},
    "data": BASE,
    "engine": BASE | {"data"},
    "runs": BASE | {"data", "engine"},
    "remote": BASE,
    "serving": BASE | {"data", "engine", "remote"},  # remote: serving.hosted runs it on a host, tunnelled
    "compare": BASE | {"data", "engine", "runs"},  # reads experiment folders, as `ls` does
    "watch": BASE | {"data", "engine", "runs"},  # monitor's snapshot and rendering
    "sweeps": BASE | {"data", "engine", "runs", "remote"},
    "deploy": BASE | {"data", "engine", "serving", "runs", "remote"},  # predict/export --host run as detached jobs
    "setup": BASE | {"remote"},
    "cli": BASE | {"data", "engine", "runs", "remote", "serving", "compare", "watch", "sweeps", "deploy",
                   "setup", "cli"},
    "__main__": frozenset({"cli"}),
}
# deploy's bundle server runs in a venv with numpy + onnxruntime only: no torch, no engine, at any depth;
# serving's wire format and guards stay the same way so that it can speak the same API with them.
TORCH_FREE = ("mlconnect.deploy.server", "mlconnect.deploy.bundle_server", "mlconnect.deploy.serve",
              "mlconnect.serving.schemas", "mlconnect.serving.guards", "mlconnect.serving.api")
TORCH_FREE_FORBIDS = ("torch", "mlconnect.engine", "mlconnect.data.torch")


def _module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(module: str) -> str:
    """The layer of ``mlconnect.x.y``: ``x`` (a package or a top-level module); ``_root`` for ``mlconnect``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "_root"


def _is_module(name: str, src: Path) -> bool:
    p = src.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _imports(path: Path, src: Path = SRC) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file; ``from a import b`` also yields ``a.b`` when
    b is a submodule. Relative imports are resolved against the file's package."""
    here = _module_name(path, src).split(".")
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_pkg else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names
                    if a.name != "*" and _is_module(f"{mod}.{a.name}", src)]
    return out


def _sources(src: Path = SRC) -> list[Path]:
    return sorted((src / "mlconnect").rglob("*.py"))


def violations(src: Path = SRC) -> list[str]:
    found = []
    for path in _sources(src):
        me = _part(_module_name(path, src))
        allowed = MAY_IMPORT.get(me)
        if allowed is None:
            found.append(f"{path.relative_to(src)}: mlconnect.{me} has no row in MAY_IMPORT; give it its layer")
            continue
        for line, mod in _imports(path, src):
            if mod != "mlconnect" and not mod.startswith("mlconnect."):
                continue
            there = _part(mod)
            if there != me and there not in allowed:
                found.append(f"{path.relative_to(src)}:{line}: {me} imports {mod} (a layer above it)")
    return found


def test_no_module_imports_a_layer_above_it() -> None:
    assert violations() == []


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(_module_name(p)) for p in _sources()}
    assert parts - set(MAY_IMPORT) == set()


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The test can fail: an engine module importing the CLI, a data module importing engine, a new part."""
    fake = tmp_path / "mlconnect"
    (fake / "engine").mkdir(parents=True)
    (fake / "data").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "engine" / "__init__.py").write_text("")
    (fake / "engine" / "loop.py").write_text("def f():\n    from mlconnect.cli.common import info\n")
    (fake / "data" / "__init__.py").write_text("from ..engine import loop\n")
    (fake / "newpart.py").write_text("from mlconnect import errors\n")
    got = violations(tmp_path)
    assert any("engine/loop.py:2: engine imports mlconnect.cli.common" in v for v in got), got
    assert any("data/__init__.py:1: data imports mlconnect.engine" in v for v in got), got
    assert any("mlconnect.newpart has no row" in v for v in got), got


# ---- the torch-free bundle server ------------------------------------------------------------------

def _graph(src: Path = SRC) -> dict[str, set[str]]:
    """mlconnect module -> the modules it imports (mlconnect ones resolved to files, others by name)."""
    modules = {_module_name(p, src): p for p in _sources(src)}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for _line, mod in _imports(path, src):
            if mod.startswith("mlconnect"):
                # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c: every existing prefix counts
                parts = mod.split(".")
                deps |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & modules.keys()
            else:
                deps.add(mod.split(".")[0])
        graph[name] = deps
    return graph


def torch_free_violations(src: Path = SRC) -> list[str]:
    graph, found = _graph(src), []
    for root in [m for m in graph if m.startswith(TORCH_FREE)]:
        seen, stack = {root}, [root]
        while stack:
            m = stack.pop()
            for d in sorted(graph.get(m, ())):
                if d.startswith(TORCH_FREE_FORBIDS):
                    found.append(f"{root} reaches {d} (through {m})")
                elif d in graph and d not in seen:
                    seen.add(d)
                    stack.append(d)
    return found


def test_the_bundle_server_reaches_neither_torch_nor_engine() -> None:
    assert torch_free_violations() == []


def test_the_torch_free_check_can_fail(tmp_path: Path) -> None:
    fake = tmp_path / "mlconnect"
    (fake / "deploy").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "deploy" / "__init__.py").write_text("")
    (fake / "deploy" / "limits.py").write_text("def f():\n    import torch\n")
    (fake / "deploy" / "server.py").write_text("from mlconnect.deploy import limits\n")
    assert torch_free_violations(tmp_path) == [
        "mlconnect.deploy.server reaches torch (through mlconnect.deploy.limits)"]
