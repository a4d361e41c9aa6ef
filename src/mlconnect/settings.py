"""Settings: where the project is, which hosts exist, and how to reach them.

Sources, from weakest to strongest (a later source overrides an earlier one key by key):

1. the user file, ``~/.config/mlconnect/config.toml`` (or ``MLCONNECT_CONFIG``): personal hosts
   and defaults shared by every project;
2. the project file, ``mlconnect.toml``, found by walking up from the current directory;
3. ``MLCONNECT_*`` environment variables;
4. command-line flags (passed in by the CLI as ``overrides``).

The project file is more specific than the user file, so it wins; env and flags are per-invocation.

A host entry (``[hosts.NAME]``) may set ``hostname``, ``port``, ``user``, ``identity_file``,
``remote_root``, ``python``, ``env`` (shell lines run before every command on the host, e.g.
``source ~/.venvs/ml/bin/activate``) and ``data_path``. A host named with ``--host`` that has no
entry is taken as an ``~/.ssh/config`` alias.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlconnect.errors import ConfigError, MlconnectError, UsageError
from mlconnect.fileio import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PROJECT_FILE = "mlconnect.toml"
HOST_KEYS = ("hostname", "port", "user", "identity_file", "remote_root", "python", "env", "data_path")
TOP_KEYS = ("default_host", "data_path", "remote_root", "hosts", "project")


@dataclass
class HostConfig:
    """One ``[hosts.NAME]`` entry; every field but ``name`` is optional."""

    name: str
    hostname: str | None = None
    port: int | None = None
    user: str | None = None
    identity_file: str | None = None
    remote_root: str | None = None
    python: str | None = None
    env: list[str] = field(default_factory=list)
    data_path: str | None = None

    @property
    def defines_connection(self) -> bool:
        """True when mlconnect.toml says how to connect, rather than leaving it to ~/.ssh/config."""
        return bool(self.hostname or self.port or self.user or self.identity_file)


@dataclass
class Settings:
    """The merged view every command reads."""

    project_root: Path | None  # the folder holding mlconnect.toml, None outside a project
    cwd: Path
    default_host: str | None = None
    data_path: str | None = None  # None: the config's own data_path (RecBole's default)
    remote_root: str | None = None  # applies to hosts that do not set their own
    hosts: dict[str, HostConfig] = field(default_factory=dict)
    ssh_config: str | None = None
    sources: list[str] = field(default_factory=list)  # files read, for `doctor`

    @property
    def root(self) -> Path:
        """The project folder: where mlconnect.toml is, else the current directory."""
        return self.project_root or self.cwd

    def host(self, name: str) -> HostConfig:
        """The entry for ``name``; an empty one (pure ssh-config alias) when not configured."""
        return self.hosts.get(name) or HostConfig(name=name)

    def data_path_for(self, name: str | None) -> str | None:
        """Where the datasets are on host ``name`` (None: this machine): its entry, else the top level.

        A relative path is relative to the project root, here and in the host's copy of it.
        """
        h = self.hosts.get(name) if name else None
        return (h.data_path if h and h.data_path else None) or self.data_path

    def remote_root_for(self, name: str) -> str:
        """Where the project lives on host ``name``: host entry, then top level, then ~/mlconnect/<dir>."""
        h = self.hosts.get(name)
        if h and h.remote_root:
            return h.remote_root
        if self.remote_root:
            return self.remote_root
        return f"~/mlconnect/{self.root.name}"


def find_project_root(start: str | os.PathLike[str] | None = None) -> Path | None:
    """Walk up from ``start`` (default: cwd) to the first folder holding mlconnect.toml."""
    here = Path(start or os.getcwd()).resolve()
    for d in (here, *here.parents):
        if (d / PROJECT_FILE).is_file():
            return d
    return None


def project_data_path(config: str | os.PathLike[str] | None) -> dict[str, str]:
    """``{"data_path": ...}`` from mlconnect.toml (or MLCONNECT_DATA_PATH), resolved against the
    project root, for a run whose config file does not name its own data_path; else ``{}``."""
    import yaml

    try:
        doc = yaml.safe_load(Path(config).read_text()) if config else None
    except (OSError, yaml.YAMLError):
        doc = None  # the config loader reports it
    if isinstance(doc, dict) and "data_path" in doc:
        return {}
    s = load_settings()
    return {"data_path": str(s.root / s.data_path)} if s.data_path else {}


def user_config_path() -> Path:
    env = os.environ.get("MLCONNECT_CONFIG")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mlconnect" / "config.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([str(exc)], source=str(path), hint="fix the TOML syntax there") from exc


def _validate(data: dict[str, Any], source: str) -> list[str]:
    """Every problem in one file at once (unknown keys are typos more often than not)."""
    problems = [f"unknown key {k!r}" for k in data if k not in TOP_KEYS]
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict):
        return [*problems, "'hosts' must be a table of [hosts.NAME] sections"]
    for name, h in hosts.items():
        if not isinstance(h, dict):
            problems.append(f"hosts.{name} must be a table")
            continue
        problems += [f"hosts.{name}: unknown key {k!r}" for k in h if k not in HOST_KEYS]
        if "port" in h and not (isinstance(h["port"], int) and 0 < h["port"] < 65536):
            problems.append(f"hosts.{name}.port must be a number between 1 and 65535")
        if "env" in h and not (isinstance(h["env"], list) and all(isinstance(x, str) for x in h["env"])):
            problems.append(f"hosts.{name}.env must be a list of strings (shell lines)")
        for k in ("hostname", "user", "identity_file", "remote_root", "python", "data_path"):
            if k in h and not isinstance(h[k], str):
                problems.append(f"hosts.{name}.{k} must be a string")
    for k in ("default_host", "data_path", "remote_root"):
        if k in data and not isinstance(data[k], str):
            problems.append(f"{k} must be a string")
    return problems


def _merge(settings: Settings, data: dict[str, Any]) -> None:
    for k in ("default_host", "data_path", "remote_root"):
        if k in data:
            setattr(settings, k, data[k])
    for name, h in data.get("hosts", {}).items():
        base = settings.hosts.get(name) or HostConfig(name=name)
        settings.hosts[name] = replace(base, **{k: v for k, v in h.items() if k in HOST_KEYS})


def load_settings(cwd: str | os.PathLike[str] | None = None, *,
                  overrides: dict[str, Any] | None = None) -> Settings:
    """User file, then mlconnect.toml, then MLCONNECT_* env, then ``overrides`` (flags)."""
    here = Path(cwd or os.getcwd()).resolve()
    project_root = find_project_root(here)
    s = Settings(project_root=project_root, cwd=here)
    files = [user_config_path()]
    if project_root:
        files.append(project_root / PROJECT_FILE)
    for path in files:
        data = _read_toml(path)
        if not data:
            continue
        problems = _validate(data, str(path))
        if problems:
            raise ConfigError(problems, source=str(path))
        _merge(s, data)
        s.sources.append(str(path))
    env = {
        "default_host": os.environ.get("MLCONNECT_HOST"),
        "data_path": os.environ.get("MLCONNECT_DATA_PATH"),
        "remote_root": os.environ.get("MLCONNECT_REMOTE_ROOT"),
        "ssh_config": os.environ.get("MLCONNECT_SSH_CONFIG"),
    }
    for k, v in {**env, **(overrides or {})}.items():
        if v not in (None, ""):
            if not hasattr(s, k):
                raise UsageError(f"unknown setting {k!r}", "this is a bug in the calling command")
            setattr(s, k, v)
    if s.ssh_config:
        s.ssh_config = str(Path(s.ssh_config).expanduser())
    return s


TEMPLATE = '''\
# mlconnect.toml: this project's settings (mlconnect finds it by walking up from the cwd).
# Precedence: ~/.config/mlconnect/config.toml < this file < MLCONNECT_* env < command-line flags.

# The host every command uses without --host. Leave it out to run everything on this machine.
{default_host_line}

# Where the training data lives, relative to the project (on whichever machine runs).
data_path = "{data_path}"

# Hosts: either an alias from ~/.ssh/config (then only remote_root/python/env are needed here),
# or a full connection (hostname, port, user, identity_file).
[hosts.{host}]
{connection_lines}
# Where `mlconnect sync` puts the project on the host ("~/" is the remote home).
remote_root = "{remote_root}"
# The interpreter on the host; `mlconnect bootstrap` creates this venv.
python = "{remote_root}/.venv/bin/python"
# Shell lines run before every command on the host (activate conda, export CUDA_VISIBLE_DEVICES, ...).
env = []
# data_path = "/mnt/d/datasets"   # the data on the host, when it is not inside the project
'''


def render_template(*, host: str = "gpu-box", hostname: str | None = None, port: int | None = None,
                    user: str | None = None, identity_file: str | None = None,
                    remote_root: str | None = None, data_path: str = "data",
                    project_name: str = "project", set_default: bool = True) -> str:
    """The commented mlconnect.toml `mlconnect init` writes."""
    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'

    conn = []
    conn.append(f"hostname = {q(hostname)}" if hostname
                else f'# hostname = "192.168.1.50"   # else the ssh alias {host!r}')
    conn.append(f"port = {int(port)}" if port else "# port = 2222")
    conn.append(f"user = {q(user)}" if user else '# user = "ana"')
    conn.append(f"identity_file = {q(identity_file)}" if identity_file else '# identity_file = "~/.ssh/id_ed25519"')
    default_line = f"default_host = {q(host)}" if set_default else f"# default_host = {q(host)}"
    return TEMPLATE.format(default_host_line=default_line, data_path=data_path, host=q(host) if not
                           host.replace("-", "").replace("_", "").isalnum() else host,
                           connection_lines="\n".join(conn),
                           remote_root=remote_root or f"~/mlconnect/{project_name}")


def write_project_file(directory: Path, text: str, *, force: bool = False) -> Path:
    """Write mlconnect.toml atomically; refuse to overwrite unless ``force``."""
    path = directory / PROJECT_FILE
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", "edit it, or pass --force to overwrite it")
    tomllib.loads(text)  # never write a file we could not read back
    atomic_write_text(path, text)
    return path


def _toml_str(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_host_python(path: Path, host: str, python: str) -> None:
    """Set ``python`` in ``[hosts.<host>]`` of ``path``, keeping every other line (and comment) as it was."""
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines(keepends=True)
    header = re.compile(r"""^\s*\[\s*hosts\s*\.\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*\]\s*(#.*)?$""")
    start = next((i for i, ln in enumerate(lines)
                  if (m := header.match(ln.rstrip("\r\n"))) and host in m.groups()[:3]), None)
    entry = f"python = {_toml_str(python)}\n"
    if start is None:
        key = host if re.fullmatch(r"[A-Za-z0-9_-]+", host) else _toml_str(host)
        sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
        new = f"{text}{sep}[hosts.{key}]\n{entry}"
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].lstrip().startswith("[")), len(lines))
        for j in range(start + 1, end):
            m = re.match(r"^(\s*)python\s*=", lines[j])
            if m:
                lines[j] = m.group(1) + entry
                break
        else:
            lines.insert(start + 1, entry)
        new = "".join(lines)
    try:
        ok = tomllib.loads(new).get("hosts", {}).get(host, {}).get("python") == python
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:  # a layout this line editor does not understand (inline tables, dotted keys): never guess
        raise MlconnectError(f"could not set python for {host} in {path} automatically",
                             f"add `python = {_toml_str(python)}` under [hosts.{host}] by hand")
    atomic_write_text(path, new)
