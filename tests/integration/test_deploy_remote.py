"""`predict --host` and `export --host` over a real OpenSSH server on 127.0.0.1.

The "box" is this machine through sshd with throwaway keys, running the same venv, with its project
root a temp folder holding a trained experiment. predict runs detached there as a job (ps, logs,
pull); export runs there and the bundle comes back checked.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile

import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from runs_sshd import start_sshd, stop_sshd
from runs_support import cli_env, mlc, ps_json, read_json, wait_for
from tests.conftest import require_tool

from mlconnect.deploy.bundle import Bundle
from support import deploy

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory):
    require_tool("sshd", "ssh", "rsync", "ssh-keygen")
    tmp = tmp_path_factory.mktemp("deploy_remote")
    sshd = start_sshd(tmp / "sshd")
    remote, laptop = tmp / "remote_root", tmp / "laptop"
    laptop.mkdir()
    base = tmp_path_factory.getbasetemp() / "deploy"  # the trained experiments test_deploy.py shares
    base.mkdir(exist_ok=True)
    shutil.copytree(deploy.trained(base, "SASRec"), remote / "experiments" / "exp")
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    env = cli_env(tmp)
    env["MLCONNECT_CONTROL_DIR"] = tempfile.mkdtemp(prefix="mlc-dep-", dir="/tmp")  # short unix socket paths
    yield {"laptop": laptop, "remote": remote, "env": env, "base": base,
           "host": ["--host", sshd.alias, "--ssh-config", str(sshd.ssh_config)]}
    stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])


def test_predict_host_runs_detached_and_pull_brings_the_table(box) -> None:
    laptop, env, host = box["laptop"], box["env"], box["host"]
    st = json.loads(mlc(["predict", "exp", *host, "--out", "recs.parquet", "--k", "7", "--exclude-seen", "--json"],
                        laptop, env).stdout)
    job = st["job"]
    assert job.startswith("predict-exp-") and st["state"] in ("running", "succeeded")
    assert not (laptop / "experiments").exists()  # nothing here until pull
    wait_for(lambda: ps_json(laptop, env, host)[job]["state"] == "succeeded", timeout=120, what="the job to finish")
    mlc(["pull", job, *host], laptop, env)
    table = pq.read_table(laptop / "experiments" / job / "recs.parquet")
    assert table.num_rows == deploy.N_USERS * 7 and table.column_names == ["user_id", "rank", "item_id", "score"]
    assert "users/s" in (laptop / "experiments" / job / "training.log").read_text()

    # Detached: an unknown experiment is the job's failure (its log says why), as for a training run.
    job2 = json.loads(mlc(["predict", "nope", *host, "--out", "r.parquet", "--json"], laptop, env).stdout)["job"]
    wait_for(lambda: ps_json(laptop, env, host)[job2]["state"] == "failed", timeout=120, what="the job to fail")
    log2 = (box["remote"] / "experiments" / job2 / "training.log").read_text()
    assert len([ln for ln in log2.splitlines() if ln.startswith("error: ")]) == 1 and "nope" in log2, log2
    # The job was described once (job_spec.json) and runs deploy's entry point on it, not `mlconnect predict`.
    command = read_json(box["remote"] / "experiments" / job / "status.json")["command"]
    assert command[command.index("-m") + 1:] == ["mlconnect.deploy.jobs", "run",
                                                 str(box["remote"] / "experiments" / job / "job_spec.json")]
    assert read_json(box["remote"] / "experiments" / job / "job_spec.json")["k"] == 7


def test_predict_host_with_a_local_bundle_uploads_it_once_and_runs_there(box) -> None:
    laptop, env, host, remote = box["laptop"], box["env"], box["host"], box["remote"]
    bundle = deploy.bundle(box["base"], "SASRec")
    for _ in range(2):  # the second run finds the same bundle there and sends nothing new
        st = json.loads(mlc(["predict", "--bundle", str(bundle), *host, "--out", "recs.csv", "--k", "4", "--json"],
                            laptop, env).stdout)
        job = st["job"]
        wait_for(lambda j=job: ps_json(laptop, env, host)[j]["state"] == "succeeded", timeout=120, what="the job")
    uploaded = list((remote / "bundles").iterdir())
    assert len(uploaded) == 1 and Bundle.load(uploaded[0]).card == Bundle.load(bundle).card
    mlc(["pull", job, *host], laptop, env)
    table = pcsv.read_csv(laptop / "experiments" / job / "recs.csv")
    assert table.num_rows == deploy.N_USERS * 4
    missing = mlc(["predict", "--bundle", str(laptop / "nope"), *host, "--out", "r.csv"], laptop, env, check=False)
    assert missing.returncode == 1 and missing.stderr.count("error:") == 1 and "no bundle" in missing.stderr


def test_export_host_pulls_a_verified_bundle(box) -> None:
    laptop, env, host = box["laptop"], box["env"], box["host"]
    out = laptop / "bundles" / "exp"
    r = mlc(["export", "exp", *host, "--out", str(out)], laptop, env, timeout=240)
    assert r.stdout.strip() == str(out)
    b = Bundle.load(out)
    assert b.card["verification"]["ok"] and b.card["experiment"] == "exp"
    assert list((box["remote"] / "experiments" / "exp" / "exports").iterdir())  # made there, kept there
    again = mlc(["export", "exp", *host, "--out", str(out)], laptop, env, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = mlc(["export", "ghost", *host, "--out", str(laptop / "g")], laptop, env, check=False)
    assert missing.returncode == 1 and missing.stderr.count("error:") == 1 and "ghost" in missing.stderr
    assert not (laptop / "g").exists()
