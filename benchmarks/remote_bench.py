"""Transport benchmark against a loopback sshd: prints a markdown table.

    .venv/bin/python benchmarks/remote_bench.py [--repeat 20] [--files 10000]

Rows: `ssh host true` cold (no master) vs multiplexed (Target.run on a warm master); `mlconnect status`
when the runs layer provides it; rsync of a 10,000-file tree (first sync, no-change resync, one-file
change) through `sync_project` vs raw rsync with the same flags. `mlconnect train --host` until the
run is started, and the other run commands, are timed by benchmarks/runs_bench.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mlconnect.remote.ssh import resolve_target  # noqa: E402
from mlconnect.remote.sync import rsync_argv, sync_project  # noqa: E402
from support.sshd import start_sshd  # noqa: E402


def timed(fn, repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def login_user_rows(h, tmp: Path, user: str, repeat: int) -> list[tuple[str, str, str]]:
    """The same multiplexed round trip logged in as ``user`` (needs root: sshd reads our authorized_keys)."""
    from mlconnect.settings import HostConfig

    for p in (tmp, h.dir, h.dir / "authorized_keys"):
        p.chmod(0o755 if p.is_dir() else 0o644)  # the other account must read the throwaway key list
    u = resolve_target(h.alias, ssh_config=str(h.ssh_config))
    u.host = HostConfig(name=h.alias, user=user)
    u.remote_root = "/tmp"
    u.run(["true"])
    warm = timed(lambda: u.run(["true"]), repeat)
    raw_argv = [*u.ssh_argv(), "true"]
    raw = timed(lambda: subprocess.run(raw_argv, check=True, stdin=subprocess.DEVNULL), repeat)
    u.close_master()
    return [(f"Target.run(['true']), multiplexed, as {user}", f"{warm:.1f} ms", "target ≤ 50 ms"),
            (f"raw `ssh host true` on the same master, as {user}", f"{raw:.1f} ms", "no mlconnect code")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--login-user", help="also time the multiplexed round trip as this local account (sshd runs "
                                         "as root): its login shell start-up is what every ssh command pays")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mlc-bench-"))
    os.environ["MLCONNECT_CONTROL_DIR"] = str(tmp / "cm")
    h = start_sshd(tmp / "srv")
    env = {**os.environ, "MLCONNECT_SSH_CONFIG": str(h.ssh_config)}
    rows: list[tuple[str, str, str]] = []
    try:
        t = resolve_target(h.alias, ssh_config=str(h.ssh_config))
        t.remote_root = str(tmp)
        cold_argv = [*t.ssh_argv(["ControlMaster=no", "ControlPath=none"]), "true"]
        cold = timed(lambda: subprocess.run(cold_argv, check=True, stdin=subprocess.DEVNULL), a.repeat)
        t.run(["true"])
        warm = timed(lambda: t.run(["true"]), a.repeat)
        raw_argv = [*t.ssh_argv(), "true"]  # same master, no mlconnect in between
        raw = timed(lambda: subprocess.run(raw_argv, check=True, stdin=subprocess.DEVNULL), a.repeat)
        # sshd runs every command through the user's login shell, and bash reads ~/.bashrc for ssh
        # commands: that start-up is part of every round trip and none of it is ours.
        shell = timed(lambda: subprocess.run(["bash", "-c", "[ -f ~/.bashrc ] && . ~/.bashrc; true"],
                                             stdin=subprocess.DEVNULL, capture_output=True), a.repeat)
        if a.login_user:
            rows += login_user_rows(h, tmp, a.login_user, a.repeat)
        rows += [("ssh host true, cold (new connection)", f"{cold:.1f} ms", "-"),
                 ("Target.run(['true']), multiplexed", f"{warm:.1f} ms", "target ≤ 50 ms"),
                 ("raw `ssh host true` on the same master", f"{raw:.1f} ms", "no mlconnect code"),
                 ("the host user's shell start-up (bash + ~/.bashrc)", f"{shell:.1f} ms",
                  "paid by every ssh command")]
        cp = subprocess.run([sys.executable, "-m", "mlconnect", "status", "--help"], capture_output=True)
        if cp.returncode == 0:
            st = timed(lambda: subprocess.run([sys.executable, "-m", "mlconnect", "status", "--host", h.alias],
                                              env=env, capture_output=True), 5)
            rows.append(("mlconnect status (warm)", f"{st:.0f} ms", "includes Python start-up"))
        else:
            rows.append(("mlconnect status", "n/a", "command not available"))
        src = tmp / "proj"
        for i in range(a.files):
            d = src / f"d{i // 100}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i}.py").write_text(f"x = {i}\n" * 20)
        for label, dest in (("mlconnect sync", tmp / "r1"), ("raw rsync", tmp / "r2")):
            t.remote_root = str(dest)
            raw = rsync_argv(t, src)
            if label == "raw rsync":
                subprocess.run(["mkdir", "-p", str(dest)], check=True)
                def go(raw=raw):
                    return subprocess.run(raw, check=True, capture_output=True)
            else:
                def go():
                    return sync_project(t, src)
            first = timed(go)
            same = timed(go, 5)
            (src / "d0" / "f0.py").write_text(f"changed {time.time()}\n")
            one = timed(go)
            rows.append((f"{label}: first sync of {a.files} files", f"{first:.0f} ms", ""))
            rows.append((f"{label}: no-change resync", f"{same:.0f} ms", "median of 5"))
            rows.append((f"{label}: one-file change", f"{one:.0f} ms", ""))
    finally:
        h.stop()
    print("| measurement | value | note |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()
