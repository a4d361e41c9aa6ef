"""``sweep start --hosts a,b``: two "boxes" (two host aliases of one loopback sshd, each with its own
remote root, so each has its own project copy and experiments) run trials against the one study on
the first box; the second box's workers reach it only through their ssh session (no port anywhere)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

import pytest
from runs_sshd import start_sshd, stop_sshd
from runs_support import cli_env, mlc, read_json, wait_for, write_project, write_tiny_dataset
from tests.conftest import require_tool

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

SPACE = "learning_rate: {float: [1e-3, 1e-2], log: true}\n"


@pytest.fixture(scope="module")
def boxes(tmp_path_factory):
    require_tool("sshd", "ssh", "rsync", "ssh-keygen")
    tmp = tmp_path_factory.mktemp("sweep_hosts")
    sshd = start_sshd(tmp / "sshd", alias="boxa")
    cfg = sshd.ssh_config.read_text()
    # A second box on the same sshd; a third one is reachable but has no python with mlconnect.
    sshd.ssh_config.write_text(cfg + cfg.replace("Host boxa", "Host boxb") + cfg.replace("Host boxa", "Host boxc"))
    data = write_tiny_dataset(tmp / "hostdata")
    laptop = tmp / "laptop"
    laptop.mkdir()
    write_project(laptop, data, epochs=1)
    (laptop / "space.yaml").write_text(SPACE)
    roots = {b: tmp / f"root_{b}" for b in ("boxa", "boxb")}
    (laptop / "mlconnect.toml").write_text("".join(
        f'[hosts.{b}]\nremote_root = "{r}"\npython = "{sys.executable}"\n' for b, r in roots.items())
        + f'[hosts.boxc]\nremote_root = "{tmp / "root_boxc"}"\npython = "/nonexistent/python3"\n')
    env = cli_env(tmp)
    env["MLCONNECT_CONTROL_DIR"] = tempfile.mkdtemp(prefix="mlc-hosts-", dir="/tmp")
    yield {"sshd": sshd, "laptop": laptop, "roots": roots, "env": env, "cfg": ["--ssh-config", str(sshd.ssh_config)]}
    stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])


def _start(boxes, *extra: str, check: bool = False):
    return mlc(["sweep", "start", "--config", "configs/tiny.yaml", "--space", "space.yaml", *boxes["cfg"], *extra],
               boxes["laptop"], boxes["env"], check=check)


def test_bad_hosts_are_one_line_and_start_nothing(boxes):
    cp = _start(boxes, "--hosts", "boxa,nobox", "--trials", "2", "--name", "bad1")
    assert cp.returncode != 0 and cp.stderr.strip().splitlines() == [cp.stderr.strip()], cp.stderr
    assert "unknown host 'nobox' in --hosts" in cp.stderr
    cp = _start(boxes, "--hosts", "boxa,boxb", "--host", "boxa", "--trials", "2", "--name", "bad2")
    assert cp.returncode != 0 and len(cp.stderr.strip().splitlines()) == 1 and "--host and --hosts" in cp.stderr
    cp = _start(boxes, "--hosts", "boxa,boxc", "--trials", "2", "--name", "bad3")  # checked from boxa
    assert cp.returncode != 0 and len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    # boxc's python is missing: said by the Optuna check on each box, before the first box is asked
    assert "boxc" in cp.stderr and "/nonexistent/python3" in cp.stderr, cp.stderr
    assert not any((r / "sweeps").exists() for r in boxes["roots"].values())


def _relay_ssh_pids(box: str) -> list[int]:
    """The first box's ssh sessions to ``box``'s trial workers (the channel their study goes through)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0") if d.name.isdigit() else []
        except OSError:
            continue
        if cmd and cmd[0] == b"ssh" and any(b"--relay" in a and f"--box {box}".encode() in a for a in cmd):
            out.append(int(d.name))
    return out


def test_two_boxes_one_study_stop_resume_pull_and_a_box_that_drops_out(boxes):
    laptop, env, roots, cfg = boxes["laptop"], boxes["env"], boxes["roots"], boxes["cfg"]
    host = ["--host", "boxa", *cfg]
    out = _start(boxes, "--hosts", "boxa,boxb", "--trials", "4", "--name", "dr", "--no-prune", "--sampler", "random",
                 "--set", "epochs=30", "--set", "stopping_step=100", check=True).stdout  # long enough to stop mid-trial
    assert "sweep dr: running on boxa, boxb" in out and "mlconnect sweep status dr --host boxa" in out
    assert not (roots["boxb"] / "sweeps" / "dr" / "journal.log").exists()  # one study: on the first box
    log = roots["boxa"] / "sweeps" / "dr" / "training.log"
    exps_b = roots["boxb"] / "experiments"
    wait_for(lambda: [p for p in exps_b.glob("dr-t*") if (p / "checkpoints" / "last.json").is_file()],
             timeout=120, what="a trial on boxb mid-training")
    mlc(["sweep", "stop", "dr", *host], laptop, env)  # asked of the first box: it stops every box's workers
    stopped = json.loads(mlc(["sweep", "status", "dr", "--json", *host], laptop, env).stdout)
    assert stopped["state"] == "stopped" and "running" not in stopped["counts"] and stopped["boxes"] == ["boxa", "boxb"]
    on_b = [t for t in stopped["trials"] if t["state"] == "interrupted" and t["box"] == "boxb"]
    assert on_b, stopped["trials"]  # boxb's trial was stopped, not lost: it checkpointed and said so
    name = on_b[0]["experiments"][0]
    assert f"trial {on_b[0]['number']} interrupted (stop)" in log.read_text()  # boxb's line, through its channel
    assert read_json(exps_b / name / "status.json")["state"] == "stopped"  # what `ps` reads on boxb
    assert any((exps_b / t["experiments"][0] / "checkpoints" / "last.pt").is_file() for t in on_b)
    # Every trial is an ordinary experiment on the box that ran it, and only there.
    for t in (t for t in stopped["trials"] if t["experiments"]):
        other = roots["boxb" if t["box"] == "boxa" else "boxa"]
        assert (roots[t["box"]] / "experiments" / t["experiments"][0] / "sweep.json").is_file()
        assert not (other / "experiments" / t["experiments"][0]).exists()
    table = mlc(["sweep", "status", "dr", *host], laptop, env).stdout
    assert "boxb" in table and " box " in table
    out = mlc(["pull", name, *host], laptop, env).stdout  # asked of the first box, which never held it
    assert f"pulled {name} from boxb" in out
    assert read_json(laptop / "experiments" / name / "sweep.json")["trial"] == on_b[0]["number"]
    cp = mlc(["pull", "dr-t099", *host], laptop, env, check=False)
    assert cp.returncode != 0 and len(cp.stderr.strip().splitlines()) == 1 and "dr-t099" in cp.stderr

    mlc(["sweep", "resume", "dr", *host], laptop, env)  # every box's workers start again

    def after() -> str:  # the resumed controller's lines ("" until it has started)
        return (log.read_text().split("queued again the trials interrupted earlier", 1) + [""])[1]

    number = int(wait_for(lambda: re.search(r"trial (\d+) started on boxb", after()), timeout=120,
                          what="a trial on boxb after resume").group(1))
    pids = _relay_ssh_pids("boxb")
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)  # the network to boxb drops mid-trial: its session to the study is gone
    wait_for(lambda: (read_json(roots["boxa"] / "sweeps" / "dr" / "status.json") or {}).get("state") == "succeeded",
             timeout=180, interval=0.5, what="the sweep to finish without boxb's lost session")
    assert "worker boxb/0 exited with" in after() and "1 on each of boxb" in after()
    final = json.loads(mlc(["sweep", "status", "dr", "--json", *host], laptop, env).stdout)
    done = [t for t in final["trials"] if t["state"] == "complete"]
    requeued = [t for t in final["trials"] if t["state"] == "requeued"]
    assert len(done) == 4 and number in {t["number"] for t in requeued}  # the dropped box's trial ran again
    # Each interrupted trial was queued again exactly once (a chain when the retry was interrupted too),
    # and every configuration finished once: none lost, none run twice.
    assert sorted(t["requeued_from"] for t in final["trials"] if t["requeued_from"] is not None) == \
        sorted(t["number"] for t in requeued)
    assert len({json.dumps(t["params"], sort_keys=True) for t in done}) == 4
    for t in done:  # the study has them all, each with its results on the box that ran it
        res = read_json(roots[t["box"]] / "experiments" / t["experiments"][0] / "results" / "metrics.json")
        assert res["epochs"] == 30 and res["best_valid"]["mrr@10"] == pytest.approx(t["value"])
