"""Pure parts of `mlconnect bootstrap`: argv builders, the build id, failure lines, the mlconnect.toml edit."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlconnect import __version__
from mlconnect.errors import MlconnectError, UsageError
from mlconnect.remote.bootstrap import (
    DEFAULT_VENV,
    classify_step_failure,
    default_venv,
    pip_argv,
    rsync_wheel_argv,
    torch_argv,
    venv_argv,
    venv_python,
    wheel_install_argvs,
)
from mlconnect.remote.ssh import Target, skew_message
from mlconnect.remote.wheel import local_build_id, source_hash, wheel_argv
from mlconnect.settings import HostConfig, set_host_python, tomllib


@pytest.fixture(autouse=True)
def _cm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCONNECT_CONTROL_DIR", str(tmp_path / "cm"))


def _t(python: str | None = None) -> Target:
    return Target(name="box", is_local=False, remote_root="~/proj", python=python or "python3", ssh_config="/c",
                  host=HostConfig(name="box", python=python))


def test_venv_and_pip_argv() -> None:
    assert venv_argv("python3", "~/v") == ["python3", "-m", "venv", "~/v"]
    assert venv_argv("/usr/bin/python3.11", "~/v", system_site_packages=True) == [
        "/usr/bin/python3.11", "-m", "venv", "--system-site-packages", "~/v"]
    assert venv_python("~/v/") == "~/v/bin/python"
    assert pip_argv("py", "-r", "requirements.txt") == [
        "py", "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
        "-r", "requirements.txt"]
    # a torch spec may carry pip options (a CUDA index)
    assert torch_argv("py", "torch==2.4.1 --index-url https://download.pytorch.org/whl/cu121")[-3:] == [
        "torch==2.4.1", "--index-url", "https://download.pytorch.org/whl/cu121"]


def test_wheel_install_forces_a_rebuilt_wheel_of_the_same_version() -> None:
    assert wheel_install_argvs("py", "w.whl", same_version=False) == [pip_argv("py", "--upgrade", "w.whl[serve]")]
    forced, deps = wheel_install_argvs("py", "w.whl", same_version=True)
    assert forced == pip_argv("py", "--force-reinstall", "--no-deps", "w.whl")
    assert deps == pip_argv("py", "w.whl[serve]")  # the box serves: fastapi + uvicorn come with it


def test_wheel_argv_isolation_only_when_the_backend_is_missing(tmp_path: Path) -> None:
    offline = wheel_argv("py", tmp_path / "tree", tmp_path / "out", isolated=False)
    assert offline[:5] == ["py", "-m", "pip", "wheel", "--no-build-isolation"] and "--no-deps" in offline
    assert offline[-1] == str(tmp_path / "tree") and offline[offline.index("-w") + 1] == str(tmp_path / "out")
    assert "--no-build-isolation" not in wheel_argv("py", tmp_path, tmp_path, isolated=True)


def test_rsync_wheel_argv_goes_through_our_ssh() -> None:
    t = _t()
    argv = rsync_wheel_argv(t, Path("/cache/mlconnect-0.1.0-py3-none-any.whl"), "~/.mlconnect/venv/mlconnect-wheels/ab")
    assert argv[argv.index("-e") + 1] == t.rsync_rsh()
    assert argv[-2:] == ["/cache/mlconnect-0.1.0-py3-none-any.whl", "box:.mlconnect/venv/mlconnect-wheels/ab/"]


@pytest.mark.parametrize("python, venv", [
    (None, DEFAULT_VENV),
    ("python3", DEFAULT_VENV),
    ("~/mlconnect/proj/.venv/bin/python", "~/mlconnect/proj/.venv"),
    ("/opt/envs/ml/bin/python3.11", "/opt/envs/ml"),  # not a venv? the host probe falls back to the default
    ("/usr/local/bin/ipython", DEFAULT_VENV),
])
def test_default_venv_follows_the_configured_python(python: str | None, venv: str) -> None:
    assert default_venv(_t(python)) == venv


def _tree(root: Path) -> Path:
    (root / "src" / "mlconnect").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'mlconnect'\n")
    (root / "src" / "mlconnect" / "__init__.py").write_text("__version__ = '1'\n")
    return root


def test_source_hash_covers_the_wheel_files_only(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    h = source_hash(root)
    assert len(h) == 16 and source_hash(root) == h
    (root / "src" / "mlconnect" / "__pycache__").mkdir()
    (root / "src" / "mlconnect" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (root / "src" / "mlconnect" / "_build.py").write_text("SOURCE_HASH = 'x'\n")  # only ever in the built copy
    (root / "tests").mkdir()
    (root / "tests" / "t.py").write_text("")
    assert source_hash(root) == h
    (root / "src" / "mlconnect" / "__init__.py").write_text("__version__ = '1'  # edited\n")
    assert source_hash(root) != h
    (root / "src" / "mlconnect" / "__init__.py").write_text("__version__ = '1'\n")
    (root / "src" / "mlconnect" / "new.py").write_text("")
    assert source_hash(root) != h


def test_skew_message() -> None:
    assert skew_message("box", __version__) is None
    assert skew_message("box", "0.0.1") == (f"mlconnect {__version__} here but 0.0.1 on box — "
                                            "run `mlconnect bootstrap --host box`")
    here = local_build_id()
    assert here  # this checkout is an editable install
    assert skew_message("box", __version__, here) is None
    assert skew_message("box", __version__, "0123456789abcdef") == (
        f"mlconnect {__version__} (build {here}) here but {__version__} (build 0123456789abcdef) on box — "
        "run `mlconnect bootstrap --host box`")


DEBIAN_NO_ENSUREPIP = """The virtual environment was not created successfully because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install python3.11-venv

You may need to use sudo with that command.  After installing the python3-venv
package, recreate your virtual environment.

Failing command: /home/ana/.mlconnect/venv/bin/python3
"""


def test_step_failures_are_one_line_with_the_fix() -> None:
    t = _t()
    e = classify_step_failure(t, ["python3", "-m", "venv", "~/v"], "python3 -m venv", 1, DEBIAN_NO_ENSUREPIP)
    assert str(e) == ("python3 -m venv failed on box: ensurepip missing — run `sudo apt install python3.11-venv` "
                      "there, or pass --python with another interpreter")
    e = classify_step_failure(t, ["python3.9", "-m", "venv", "v"], "python3.9 -m venv", 127,
                              "sh: 1: exec: python3.9: not found")
    assert str(e).startswith("`python3.9` was not found on box — install Python 3.10+")
    e = classify_step_failure(t, ["py"], "pip install torch==9", 1,
                              "Collecting x\nWARNING: Retrying ... Failed to establish a new connection: [Errno 101]\n"
                              "ERROR: Could not find a version that satisfies the requirement torch==9")
    assert "cannot reach the package index" in str(e) and "PIP_INDEX_URL" in str(e)
    e = classify_step_failure(t, ["py"], "pip install -r requirements.txt", 1,
                              "Processing ./x\nERROR: x is not a valid wheel filename.\n")
    assert str(e) == ("pip install -r requirements.txt failed on box (exit 1): ERROR: x is not a valid wheel "
                      "filename. — see the output above")


TOML = """# my settings
default_host = "box"

[hosts.box]
# the GPU box
remote_root = "~/p"
python = "python3"   # old
env = ["source ~/.bashrc"]

[hosts.other]
python = "keep"
"""


def test_set_host_python_replaces_inserts_appends_and_keeps_the_rest(tmp_path: Path) -> None:
    p = tmp_path / "mlconnect.toml"
    p.write_text(TOML)
    set_host_python(p, "box", "~/.mlconnect/venv/bin/python")
    assert p.read_text() == TOML.replace('python = "python3"   # old', 'python = "~/.mlconnect/venv/bin/python"')
    p.write_text(TOML.replace('python = "python3"   # old\n', ""))
    set_host_python(p, "box", "/v/bin/python")
    data = tomllib.loads(p.read_text())
    assert data["hosts"]["box"] == {"python": "/v/bin/python", "remote_root": "~/p", "env": ["source ~/.bashrc"]}
    assert data["hosts"]["other"]["python"] == "keep" and p.read_text().startswith("# my settings\n")
    set_host_python(p, "new.box", "/w/bin/python")  # a name that needs quotes in a table header
    data = tomllib.loads(p.read_text())
    assert data["hosts"]["new.box"]["python"] == "/w/bin/python" and data["hosts"]["box"]["python"] == "/v/bin/python"
    fresh = tmp_path / "user.toml"
    set_host_python(fresh, "box", "/v/bin/python")
    assert tomllib.loads(fresh.read_text()) == {"hosts": {"box": {"python": "/v/bin/python"}}}


def test_set_host_python_refuses_a_layout_it_cannot_edit(tmp_path: Path) -> None:
    p = tmp_path / "mlconnect.toml"
    text = 'hosts = { box = { python = "python3" } }\n'
    p.write_text(text)
    with pytest.raises(MlconnectError, match="by hand"):
        set_host_python(p, "box", "/v/bin/python")
    assert p.read_text() == text


def test_extra_requirements_come_from_this_mlconnects_metadata():
    from mlconnect.remote.extras import extra_requirements

    lines = ['typer>=0.12', 'optuna>=4.0; extra == "sweep"', "mlconnect[sweep]; extra == 'dev'",
             'tomli>=2; python_version < "3.11" and extra == "sweep"']
    assert extra_requirements("sweep", lines) == ["optuna>=4.0", "tomli>=2"]
    assert extra_requirements("sweep") == ["optuna>=4.0"]  # pyproject's sweep extra, as installed here
    with pytest.raises(MlconnectError, match="names no requirements for the 'sweeps' extra"):
        extra_requirements("sweeps", lines)


def test_only_known_extras_can_be_asked_for():
    from mlconnect.remote.extras import check_extras

    assert check_extras(["sweep", "sweep"]) == ["sweep"]
    with pytest.raises(UsageError, match="--extra 'plot' is not an extra a host needs"):
        check_extras(["plot"])
