"""`mlconnect bootstrap` and version skew against the real loopback sshd (same machine, same user).

Offline and fast: the new venv is made with --system-site-packages from this interpreter's base, and the
host's env lines put this test venv's site-packages on PYTHONPATH, as a box with torch & co. already
installed would have them, so pip resolves every dependency without the network. mlconnect itself is
not importable from there (this venv has it as an editable .pth, which PYTHONPATH does not process):
the venv's copy must come from the wheel bootstrap copies over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

from mlconnect import __version__
from mlconnect.remote.wheel import find_source_root, source_hash
from support.sshd import SshdHost

pytestmark = pytest.mark.timeout(300)

BASE_PYTHON = str(Path(sys.base_prefix) / "bin" / "python3")
SITE = sysconfig.get_paths()["purelib"]
ENV_LINE = f"export PYTHONPATH={SITE}"


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "cache"), MLCONNECT_CONFIG=str(tmp / "user.toml"),
               COLUMNS="200", PYTHONUNBUFFERED="1")
    for k in ("MLCONNECT_DEBUG", "MLCONNECT_HOST", "PYTHONPATH"):
        env.pop(k, None)
    return env


def _mlc(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlconnect", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _project(d: Path, h: SshdHost, remote: Path, *, python: str | None = None, env_line: bool = True) -> Path:
    d.mkdir(parents=True)
    remote.mkdir(parents=True, exist_ok=True)
    lines = ["# my project settings", "", f"[hosts.{h.alias}]", "# where the project goes",
             f'remote_root = "{remote}"']
    if python:
        lines.append(f'python = "{python}"')
    if env_line:
        lines.append(f'env = ["{ENV_LINE}"]')
    (d / "mlconnect.toml").write_text("\n".join(lines) + "\n")
    return d


def _venv_info(python: Path) -> dict:
    code = ("import json, mlconnect\nfrom mlconnect._build import SOURCE_HASH\n"
            "print(json.dumps({'version': mlconnect.__version__, 'file': mlconnect.__file__, 'build': SOURCE_HASH}))")
    cp = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd="/",
                        env=dict(os.environ, PYTHONPATH=SITE), timeout=60)
    return json.loads(cp.stdout)


def _tiny_wheel(d: Path) -> Path:
    """A one-module wheel, so that a requirements.txt installs offline."""
    files = {"mlc_tinyreq/__init__.py": "VALUE = 42\n",
             "mlc_tinyreq-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: mlc-tinyreq\nVersion: 0.1\n",
             "mlc_tinyreq-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                "Tag: py3-none-any\n"}
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    record.append("mlc_tinyreq-0.1.dist-info/RECORD,,")
    files["mlc_tinyreq-0.1.dist-info/RECORD"] = "\n".join(record) + "\n"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "mlc_tinyreq-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


@pytest.fixture(scope="module")
def boot(sshd_host: SshdHost, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One fresh bootstrap (the expensive part) that the tests below build on, in file order."""
    tmp = tmp_path_factory.mktemp("bootstrap")
    laptop = _project(tmp / "laptop", sshd_host, tmp / "remote")
    env = _env(tmp)
    venv = tmp / "hostvenv"
    host = ["--host", sshd_host.alias, "--ssh-config", str(sshd_host.ssh_config)]
    t0 = time.monotonic()
    cp = _mlc(["bootstrap", *host, "--venv", str(venv), "--python", BASE_PYTHON, "--system-site-packages",
               "--write-config", "--json"], laptop, env)
    return {"tmp": tmp, "laptop": laptop, "env": env, "venv": venv, "host": host, "cp": cp,
            "seconds": time.monotonic() - t0, "h": sshd_host}


def test_fresh_bootstrap_installs_this_exact_mlconnect_from_the_wheel(boot: dict) -> None:
    cp = boot["cp"]
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)
    build = source_hash(find_source_root())  # type: ignore[arg-type]
    assert res["up_to_date"] is False and res["steps"] == ["venv", "mlconnect"]
    assert res["version"] == __version__ and res["build"] == build
    assert res["python"] == f"{boot['venv']}/bin/python"
    assert f"[{boot['h'].alias}] " in cp.stderr  # pip's output, streamed with the host's name
    got = _venv_info(boot["venv"] / "bin" / "python")
    assert got["version"] == __version__ and got["build"] == build
    assert got["file"].startswith(str(boot["venv"]))  # the copied wheel, not this checkout's src/
    marker = json.loads((boot["venv"] / "mlconnect-build.json").read_text())
    assert marker["source_hash"] == build and marker["version"] == __version__
    assert not (boot["venv"] / "mlconnect-wheels").exists()  # staging removed once installed
    # --write-config: python set in the host entry, comments and other keys kept
    text = (boot["laptop"] / "mlconnect.toml").read_text()
    assert res["config_written"] == str(boot["laptop"] / "mlconnect.toml")
    assert f'python = "{boot["venv"]}/bin/python"' in text
    assert text.startswith("# my project settings\n") and "# where the project goes" in text and ENV_LINE in text


def test_second_bootstrap_is_up_to_date_and_reinstalls_nothing(boot: dict) -> None:
    dist = next((boot["venv"] / "lib").glob("python3*/site-packages/mlconnect-*.dist-info"))
    before = dist.stat().st_mtime_ns
    # no --venv: the host's python (set by --write-config) names the venv
    cp = _mlc(["bootstrap", *boot["host"]], boot["laptop"], boot["env"])
    assert cp.returncode == 0, cp.stderr
    assert f"{boot['h'].alias}: already up to date" in cp.stderr
    assert "building" not in cp.stderr and "cached wheel" in cp.stderr
    assert "next: set python" not in cp.stderr  # already configured
    assert dist.stat().st_mtime_ns == before


def test_project_requirements_are_synced_and_installed(boot: dict) -> None:
    laptop = boot["laptop"]
    _tiny_wheel(laptop / "wheels")
    (laptop / "requirements.txt").write_text("./wheels/mlc_tinyreq-0.1-py3-none-any.whl\n")
    cp = _mlc(["bootstrap", *boot["host"], "--json"], laptop, boot["env"])
    assert cp.returncode == 0, cp.stderr
    res = json.loads(cp.stdout)
    assert res["steps"] == ["requirements"] and res["requirements"] is True  # mlconnect itself was current
    assert (boot["tmp"] / "remote" / "requirements.txt").is_file()  # synced first
    out = subprocess.run([str(boot["venv"] / "bin" / "python"), "-c", "import mlc_tinyreq; print(mlc_tinyreq.VALUE)"],
                         capture_output=True, text=True, check=True, cwd="/").stdout
    assert out.strip() == "42"
    again = _mlc(["bootstrap", *boot["host"], "--json"], laptop, boot["env"])
    assert json.loads(again.stdout)["up_to_date"] is True, again.stderr


def test_agent_in_the_bootstrapped_venv_matches_without_warnings(boot: dict) -> None:
    cp = _mlc(["ps", *boot["host"], "--json"], boot["laptop"], boot["env"])
    assert cp.returncode == 0, cp.stderr
    assert "warning" not in cp.stderr  # same version and same build id: nothing to say


def _site_without_optuna(d: Path) -> Path:
    """This venv's site-packages as symlinks, Optuna left out: a box with everything but the sweep extra."""
    d.mkdir()
    for entry in Path(SITE).iterdir():
        if not entry.name.lower().startswith("optuna"):
            (d / entry.name).symlink_to(entry)
    return d


@pytest.mark.slow
def test_sweep_start_installs_optuna_on_a_box_without_it(boot: dict) -> None:
    from runs_support import write_project, write_tiny_dataset

    tmp, alias, py = boot["tmp"], boot["h"].alias, f"{boot['venv']}/bin/python"
    site, laptop, remote = _site_without_optuna(tmp / "site-no-optuna"), tmp / "laptop-sweep", tmp / "remote-sweep"
    laptop.mkdir()
    write_project(laptop, write_tiny_dataset(tmp / "sweepdata"), epochs=1)
    (laptop / "space.yaml").write_text("learning_rate: {float: [1e-3, 1e-2], log: true}\n")

    def settings(*env_lines: str, python: str = py) -> None:
        lines = [f'export PYTHONPATH={site}', "export OMP_NUM_THREADS=1", *env_lines]
        (laptop / "mlconnect.toml").write_text(f'[hosts.{alias}]\nremote_root = "{remote}"\npython = "{python}"\n'
                                               f"env = {json.dumps(lines)}\n")

    start = ["sweep", "start", *boot["host"], "--config", "configs/tiny.yaml", "--space", "space.yaml",
             "--trials", "1", "--name", "s1", "--json"]
    # The host's python is no venv: never pip into it; bootstrap makes one.
    settings(python=BASE_PYTHON)
    cp = _mlc(start, laptop, boot["env"])
    assert cp.returncode == 1 and cp.stderr.strip().splitlines() == [
        f"error: optuna (the `sweep` extra) is not installed for {BASE_PYTHON} on {alias}, which is not a venv — "
        f"run `mlconnect bootstrap --host {alias} --extra sweep`: it makes one with mlconnect and optuna"], cp.stderr
    # The box cannot reach a package index: one error line naming what is missing and the fix; no sweep there.
    settings("export PIP_NO_INDEX=1", "export PIP_FIND_LINKS=")
    cp = _mlc(start, laptop, boot["env"])
    assert cp.returncode == 1, cp.stderr
    err = [ln for ln in cp.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and err[0].startswith(
        f"error: optuna (the `sweep` extra) is not installed on {alias} and installing it failed: "
        f"pip install optuna>=4.0 failed on {alias}"), cp.stderr
    assert err[0].endswith(f"run `mlconnect bootstrap --host {alias} --extra sweep`"), err[0]
    assert not (remote / "sweeps").exists()
    # With its index: `sweep start` installs Optuna into the box's venv, then the sweep runs there.
    settings()
    cp = _mlc(start, laptop, boot["env"])
    assert cp.returncode == 0, cp.stderr
    assert f"optuna (the `sweep` extra) is not installed for {py} on {alias}: installing it" in cp.stderr
    assert next((boot["venv"] / "lib").glob("python3*/site-packages/optuna/__init__.py"))
    status = remote / "sweeps" / "s1" / "status.json"
    deadline = time.monotonic() + 180
    while (json.loads(status.read_text()) if status.is_file() else {}).get("state") in (None, "queued", "running"):
        assert time.monotonic() < deadline, "the sweep did not finish"
        time.sleep(0.5)
    st = json.loads(_mlc(["sweep", "status", "s1", *boot["host"], "--json"], laptop, boot["env"]).stdout)
    assert st["counts"] == {"complete": 1}, st
    # Present now: `bootstrap --extra sweep` has nothing to install.
    cp = _mlc(["bootstrap", *boot["host"], "--extra", "sweep", "--json"], laptop, boot["env"])
    assert cp.returncode == 0 and json.loads(cp.stdout)["up_to_date"] is True, cp.stderr


def test_missing_python_for_the_venv_is_one_line(boot: dict) -> None:
    cp = _mlc(["bootstrap", *boot["host"], "--venv", str(boot["tmp"] / "other"), "--python", "/nonexistent/python3"],
              boot["laptop"], boot["env"])
    assert cp.returncode == 1
    err = [ln for ln in cp.stderr.splitlines() if ln.startswith("error:")]
    assert err == [f"error: `/nonexistent/python3` was not found on {boot['h'].alias} — install Python 3.10+ there "
                   "(`sudo apt install python3 python3-venv`), or pass --python PATH"], cp.stderr


WRAPPER = """#!{python}
# A host python whose mlconnect claims another version (or build): what an old install answers.
import runpy, sys, types
import mlconnect
{patch}
assert sys.argv[1] == "-m", sys.argv
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _wrapper(path: Path, patch: str) -> Path:
    path.write_text(WRAPPER.format(python=sys.executable, patch=patch))
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("patch, there", [
    ('mlconnect.__version__ = "0.0.1"', "0.0.1"),
    ('m = types.ModuleType("mlconnect._build"); m.SOURCE_HASH = "0123456789abcdef"; '
     'sys.modules["mlconnect._build"] = m', f"{__version__} (build 0123456789abcdef)"),
])
def test_version_skew_is_one_warning_line(sshd_host: SshdHost, tmp_path: Path, patch: str, there: str) -> None:
    py = _wrapper(tmp_path / "oldpython", patch)
    laptop = _project(tmp_path / "laptop", sshd_host, tmp_path / "remote", python=str(py), env_line=False)
    host = ["--host", sshd_host.alias, "--ssh-config", str(sshd_host.ssh_config)]
    cp = _mlc(["ps", *host], laptop, _env(tmp_path))
    assert cp.returncode == 0, cp.stderr
    warnings = [ln for ln in cp.stderr.splitlines() if ln.startswith("warning:")]
    here = __version__ if "build" not in there else f"{__version__} (build {source_hash(find_source_root())})"  # type: ignore[arg-type]
    assert warnings == [f"warning: mlconnect {here} here but {there} on {sshd_host.alias} — "
                        f"run `mlconnect bootstrap --host {sshd_host.alias}`"], cp.stderr


def test_no_skew_warning_for_the_same_code(sshd_host: SshdHost, tmp_path: Path) -> None:
    laptop = _project(tmp_path / "laptop", sshd_host, tmp_path / "remote", python=sys.executable, env_line=False)
    cp = _mlc(["ps", "--host", sshd_host.alias, "--ssh-config", str(sshd_host.ssh_config)], laptop, _env(tmp_path))
    assert cp.returncode == 0 and "warning" not in cp.stderr, cp.stderr


def test_mlconnect_missing_on_the_host_says_bootstrap(sshd_host: SshdHost, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    subprocess.run([BASE_PYTHON, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=60)
    py = f"{bare}/bin/python"
    laptop = _project(tmp_path / "laptop", sshd_host, tmp_path / "remote", python=py, env_line=False)
    cp = _mlc(["ps", "--host", sshd_host.alias, "--ssh-config", str(sshd_host.ssh_config)], laptop, _env(tmp_path))
    assert cp.returncode == 1
    assert cp.stderr.strip().splitlines() == [
        f"error: mlconnect is not installed for {py} on {sshd_host.alias} — "
        f"run `mlconnect bootstrap --host {sshd_host.alias}`"]


def test_no_host_is_one_line_and_exit_0(tmp_path: Path) -> None:
    cp = _mlc(["bootstrap"], tmp_path, _env(tmp_path))
    assert cp.returncode == 0
    assert cp.stderr.strip().splitlines() == [
        "no host: this machine already runs this mlconnect; `mlconnect bootstrap --host NAME` sets up a host"]
