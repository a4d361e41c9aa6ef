"""Run-lifecycle latency over a loopback sshd: ``train --host`` until the trainer runs, ``status``, ``ps``.

    .venv/bin/python benchmarks/runs_bench.py [--repeat 5]

Starts a throwaway OpenSSH server on 127.0.0.1 (tests/integration/runs_sshd.py), a project whose
host is that server (remote_root in a temp dir, same venv), and times the real CLI as a person
runs it (a new ``python -m mlconnect`` process each time, warm ssh master). Each training is a
tiny SASRec run; the next one starts only when the previous one has finished, so runs do not
compete for the CPU. Prints a markdown table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests" / "integration"), str(HERE.parent / "tests")]  # the loopback sshd helpers

from runs_sshd import start_sshd, stop_sshd  # noqa: E402
from runs_support import cli_env, write_project, write_tiny_dataset  # noqa: E402


def _cli(args: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    cp = subprocess.run([sys.executable, "-m", "mlconnect", *args], cwd=cwd, env=env, text=True,
                        capture_output=True, stdin=subprocess.DEVNULL, timeout=300)
    dt = time.perf_counter() - t0
    if cp.returncode != 0:
        raise SystemExit(f"mlconnect {' '.join(args)} failed:\n{cp.stderr}")
    return dt, cp


def _wait_done(status: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(status.read_text()).get("state") not in ("queued", "running"):
                return
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"run did not finish: {status}")


def _first_progress(progress: Path, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if progress.exists():
            return time.perf_counter()
        time.sleep(0.01)
    raise SystemExit(f"no progress.json: {progress}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="trainings to start (status/ps: 2x this)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="runs-bench-"))
    sshd = start_sshd(tmp / "sshd")
    laptop = tmp / "laptop"
    laptop.mkdir()
    write_project(laptop, write_tiny_dataset(tmp / "data"), epochs=1)
    remote = tmp / "remote_root"
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n')
    env = cli_env(tmp)
    env["MLCONNECT_CONTROL_DIR"] = tempfile.mkdtemp(prefix="mlc-bench-", dir="/tmp")
    host = ["--host", sshd.alias, "--ssh-config", str(sshd.ssh_config)]
    rows: dict[str, list[float]] = {}
    try:
        remote.mkdir()
        _cli(["status", *host], laptop, env)  # first contact: opens the master
        for i in range(args.repeat):
            name = f"b{i}"
            t0 = time.perf_counter()
            dt, cp = _cli(["train", *host, "--config", "configs/tiny.yaml", "--experiment", name],
                          laptop, env)
            st = json.loads((remote / "experiments" / name / "status.json").read_text())
            assert st.get("pid"), st  # train returned with the trainer's pid recorded
            rows.setdefault("`mlconnect train --host` returns, trainer pid running (incl. sync)", []).append(dt)
            t_prog = _first_progress(remote / "experiments" / name / "progress.json")
            rows.setdefault("… until the trainer writes progress.json (torch import, data, model)",
                            []).append(t_prog - t0)
            _wait_done(remote / "experiments" / name / "status.json")
        sync_times = []
        for _ in range(args.repeat):  # the sync part alone, no change since the last one
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import sys; from mlconnect.cli.common import target_from; "
                            "from mlconnect.cli.runs import sync_project; "
                            "sync_project(target_from(sys.argv[1], sys.argv[2]))",
                            sshd.alias, str(sshd.ssh_config)], cwd=laptop, env=env, check=True)
            sync_times.append(time.perf_counter() - t0)
        rows["… of which: project sync, no change (python start + rsync)"] = sync_times
        for cmd in (["status"], ["ps"], ["logs", "b0"]):
            key = f"`mlconnect {' '.join(cmd)} --host` (warm master)"
            rows[key] = [_cli([*cmd, *host], laptop, env)[0] for _ in range(2 * args.repeat)]
        key = "`mlconnect status` (local, no host)"
        rows[key] = [_cli(["status"], laptop, env)[0] for _ in range(2 * args.repeat)]
        t_ssh = []
        for _ in range(2 * args.repeat):
            t0 = time.perf_counter()
            subprocess.run(["ssh", "-F", str(sshd.ssh_config), "-o", "ControlMaster=auto",
                            "-o", f"ControlPath={env['MLCONNECT_CONTROL_DIR']}/%C", sshd.alias, "true"],
                           check=True, stdin=subprocess.DEVNULL)
            t_ssh.append(time.perf_counter() - t0)
        rows["reference: `ssh host true` (warm master)"] = t_ssh
    finally:
        stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nRun lifecycle over loopback sshd ({os.cpu_count()} CPUs, {args.repeat} trainings)\n")
    print("| operation | median (s) | min (s) | max (s) | n |")
    print("|---|---:|---:|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} | {len(v)} |")


if __name__ == "__main__":
    main()
