"""Pure argv building: ssh options, remote quoting, rsync flags, forwards."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from mlconnect.remote.ssh import Target, remote_command, remote_quote, rsh_quote
from mlconnect.remote.sync import rsync_argv
from mlconnect.remote.tunnel import forward_argv
from mlconnect.settings import HostConfig


@pytest.fixture(autouse=True)
def _cm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLCONNECT_CONTROL_DIR", str(tmp_path / "cm"))


def _t(**kw) -> Target:
    return Target(name="box", is_local=False, remote_root="~/proj", python="python3", ssh_config="/c", **kw)


def test_ssh_argv_has_safe_options() -> None:
    argv = _t().ssh_argv()
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert argv[:3] == ["ssh", "-F", "/c"] and argv[-1] == "box"
    for o in ("ControlMaster=auto", "BatchMode=yes", "StrictHostKeyChecking=accept-new", "ForwardAgent=no"):
        assert o in opts
    assert any(o.startswith("ControlPath=") and o.endswith("/%C") for o in opts)


def test_toml_host_adds_port_user_identity() -> None:
    argv = _t(host=HostConfig("box", hostname="10.0.0.5", port=2222, user="ana", identity_file="/k")).ssh_argv()
    assert argv[-1] == "10.0.0.5"
    assert argv[argv.index("-p"):argv.index("-p") + 2] == ["-p", "2222"]
    assert "-l" in argv and "ana" in argv and "/k" in argv


def test_remote_command_quotes_everything_but_home() -> None:
    cmd = remote_command(["echo", "a b", "$(rm -rf /)", "~/x y"], cwd="~/proj", env_lines=["export A=1"])
    out = subprocess.run(["sh", "-c", cmd.replace("cd ", "cd /tmp || true; : ", 1)], capture_output=True,
                         text=True, env={"HOME": "/h", "PATH": "/usr/bin:/bin"}).stdout
    assert out == "a b $(rm -rf /) /h/x y\n"
    assert remote_quote("~") == '"$HOME"' and remote_quote("it's") == shlex.quote("it's")


def test_rsh_quote_and_rsync_flags(tmp_path: Path) -> None:
    assert rsh_quote("/a b/c") == "'/a b/c'"
    (tmp_path / ".gitignore").write_text("*.tmp\n")
    argv = rsync_argv(_t(), tmp_path, delete=True, dry_run=True)
    assert "--inplace" not in argv and not any(a.startswith(("--info", "--mkpath")) for a in argv)
    assert "--filter=P experiments/" in argv and "--filter=:- .gitignore" in argv and "--dry-run" in argv
    assert argv[-1] == "box:proj/"


def test_forward_argv_binds_loopback_and_owns_its_connection() -> None:
    argv = forward_argv(_t(), [(6007, 6006)])
    assert "127.0.0.1:6007:127.0.0.1:6006" in argv and "-N" in argv
    opts = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    assert opts.index("ControlMaster=no") < opts.index("ControlMaster=auto")  # first value wins in ssh


def test_agent_hints_get_the_host_flag() -> None:
    from mlconnect.remote.argv import with_host_flag

    hint = "it has finished: `mlconnect pull k1` fetches its results (see `mlconnect ps`)"
    assert with_host_flag(hint, "gpubox") == ("it has finished: `mlconnect pull k1 --host gpubox` fetches its "
                                              "results (see `mlconnect ps --host gpubox`)")
    kept = "`mlconnect logs k1 -f --host other` follows it; `mlconnect setup client` prints it; `mlconnect psx`"
    assert with_host_flag(kept, "gpubox") == kept  # already has a host / not a per-host command
