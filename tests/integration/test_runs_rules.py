"""Issue 10, the smaller rules: one "is this host this machine" rule, mlconnect.toml's data_path
reaching the trainer (foreground and detached), advice that fits a config error, and `logs -f`
retry lines that name the host. Real CLI processes, a real ssh client against a closed port.
"""

from __future__ import annotations

import io

import pytest
from runs_support import cli_env, mlc, read_json, wait_for, write_project, write_tiny_dataset
from tests.conftest import require_tool

from mlconnect.remote.ssh import Target
from mlconnect.runs.client import follow_logs
from support.sshd import free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    cfg = write_project(root, write_tiny_dataset(root / "mydata"), epochs=1)
    # A config without data_path: the project's mlconnect.toml says where the data is.
    cfg.write_text("\n".join(ln for ln in cfg.read_text().splitlines() if not ln.startswith("data_path")))
    (root / "mlconnect.toml").write_text('data_path = "mydata"\n')
    return root, cli_env(tmp_path)


def test_every_name_for_this_machine_trains_in_the_foreground(project):
    root, env = project
    # `--host local` always did; its alias detached the run (issue 10).
    out = mlc(["train", "--host", "localhost-local", "--config", "configs/tiny.yaml", "-e", "b"], root, env).stdout
    assert "best epoch 1 of 1" in out and "follow:" not in out, out
    assert not (root / "experiments" / "b" / "status.json").exists()  # no detached run


@pytest.mark.slow  # several real trainings
def test_data_path_from_mlconnect_toml_reaches_foreground_and_detached_runs(project):
    root, env = project
    mlc(["train", "--config", "configs/tiny.yaml", "-e", "fg"], root, env)
    assert read_json(root / "experiments" / "fg" / "progress.json")["state"] == "finished"
    mlc(["train", "--detach", "--config", "configs/tiny.yaml", "-e", "bg"], root, env)
    st = wait_for(lambda: (s := read_json(root / "experiments" / "bg" / "status.json")) and
                  s["state"] not in ("queued", "running") and s, timeout=120, what="the detached run")
    assert st["state"] == "succeeded", (root / "experiments" / "bg" / "training.log").read_text()
    assert st["env"]["MLCONNECT_DATA_PATH"] == "mydata"


def test_config_errors_end_with_advice_that_fits(project):
    root, env = project
    cp = mlc(["train", "--config", "configs/nope.yaml"], root, env, check=False)
    assert cp.returncode == 1 and "file not found" in cp.stderr
    assert "check the path" in cp.stderr and "fix the keys above" not in cp.stderr
    (root / "configs" / "bad.yaml").write_text("model: [SASRec\n")
    cp = mlc(["train", "--config", "configs/bad.yaml"], root, env, check=False)
    assert "not valid YAML" in cp.stderr and "fix the YAML at line" in cp.stderr


def test_logs_follow_retry_lines_name_the_host(tmp_path, capsys):
    require_tool("ssh")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host deadbox\n  HostName 127.0.0.1\n  Port {free_port()}\n  BatchMode yes\n"
                   f"  ConnectTimeout 5\n  ControlPath {tmp_path}/cm-%C\n")
    target = Target(name="deadbox", is_local=False, remote_root="~/p", python="python3", ssh_config=str(cfg))
    sleeps = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 2:
            raise KeyboardInterrupt  # enough: two retries seen

    with pytest.raises(KeyboardInterrupt):
        follow_logs(target, "e1", follow=True, out=io.StringIO(), sleep=sleep)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[mlconnect]")]
    assert len(lines) == 2 and sleeps == [0.5, 1]
    assert all(ln.startswith("[mlconnect] lost the connection to deadbox (") for ln in lines), lines
    assert all("retrying in" in ln and "from byte 0" in ln for ln in lines)
