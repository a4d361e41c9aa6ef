"""`mlconnect doctor` wall time against a loopback sshd (the issue's target: within 30 s on a healthy host).

    .venv/bin/python benchmarks/doctor_bench.py [--repeat 5]

The "host" is this machine through a throwaway OpenSSH server on 127.0.0.1, running this venv (no GPU:
the GPU checks are WARN). Rows: the first doctor (opens the ssh master), warm repeats, ``--smoke`` (a
one-epoch training on the host), and a closed port (must fail fast). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS / "integration"), str(TESTS)]  # the loopback sshd helpers

from runs_sshd import start_sshd, stop_sshd  # noqa: E402

from support.sshd import free_port  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="doctor-bench-"))
    sshd = start_sshd(tmp / "sshd")
    laptop, remote = tmp / "laptop", tmp / "remote_root"
    laptop.mkdir()
    remote.mkdir()
    (laptop / "mlconnect.toml").write_text(
        f'[hosts.{sshd.alias}]\nremote_root = "{remote}"\npython = "{sys.executable}"\n\n'
        f'[hosts.closed]\nhostname = "127.0.0.1"\nport = {free_port()}\nidentity_file = "{sshd.key}"\n')
    env = {**os.environ, "NO_COLOR": "1", "MLCONNECT_CONFIG": str(tmp / "none.toml"),
           "MLCONNECT_CONTROL_DIR": tempfile.mkdtemp(prefix="mlc-db-", dir="/tmp")}
    env.pop("MLCONNECT_HOST", None)

    def doctor(host: str, *extra: str) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        cp = subprocess.run([sys.executable, "-m", "mlconnect", "doctor", "--host", host, "--ssh-config",
                             str(sshd.ssh_config), *extra], cwd=laptop, env=env, capture_output=True, text=True,
                            timeout=120)
        return time.perf_counter() - t0, cp.returncode, cp.stdout + cp.stderr

    rows = []
    try:
        first = doctor(sshd.alias)
        rows.append(("doctor, first (opens the ssh master)", [first[0]], first[1]))
        warm = [doctor(sshd.alias) for _ in range(args.repeat)]
        rows.append(("doctor, warm master", [w[0] for w in warm], max(w[1] for w in warm)))
        smoke = doctor(sshd.alias, "--smoke")
        rows.append(("doctor --smoke (one-epoch training on the host)", [smoke[0]], smoke[1]))
        closed = doctor("closed")
        rows.append(("doctor against a closed port", [closed[0]], closed[1]))
    finally:
        stop_sshd(sshd, env["MLCONNECT_CONTROL_DIR"])
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n`mlconnect doctor` over loopback sshd ({os.cpu_count()} CPUs, no GPU)\n")
    print("| run | median (s) | max (s) | n | exit code |\n|---|---:|---:|---:|---:|")
    for label, times, code in rows:
        print(f"| {label} | {statistics.median(times):.2f} | {max(times):.2f} | {len(times)} | {code} |")


if __name__ == "__main__":
    main()
