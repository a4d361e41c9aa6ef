"""``predict --host`` and ``export --host``: the same commands, run on the box.

``predict --host`` runs detached like a training run (``--bundle DIR`` is a local bundle: it is
uploaded to ``bundles/`` on the box first): this module's host side creates a job folder
``experiments/<job>/`` and hands the command to the runs layer's launcher (``start_run``: supervisor,
status.json, training.log, ``ps`` / ``logs -f`` / ``stop``), with ``--out`` inside the job folder, so
``mlconnect pull <job>`` brings the table back. ``export --host`` is quick: it runs in the foreground
on the box into ``experiments/<name>/exports/<stamp>/`` and the bundle is pulled into ``--out`` with
rsync (into a temp folder first, renamed when complete).

Hooks into other packages, all thin calls: runs.launcher (MARKER, new_run_id, start_run),
runs.store.experiments_dir, remote.ssh.Target (run, python, rsync_rsh, rsync_path, remote_root).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlconnect.errors import ExperimentError, MlconnectError, RemoteError
from mlconnect.fileio import atomic_write_text
from mlconnect.spec import Spec

JOBS = "mlconnect.deploy.jobs"  # this module, as the host entry ``Target.agent`` calls
JOB_SPEC = "job_spec.json"  # in the job folder: the job as the laptop described it


def job_name(kind: str, experiment: str) -> str:
    return f"{kind}-{Path(experiment).name}-{time.strftime('%Y%m%d-%H%M%S')}"


# -- host side ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PredictJob(Spec):
    """``predict NAME --host H``, described once: the laptop sends it, the job folder keeps it."""

    KIND = "predict job"

    experiment: str | None
    out: str  # inside the job folder on the host
    bundle: str | None = None  # instead of an experiment: a bundle folder on the host (uploaded by the laptop)
    users: str = "all"
    k: int = 50
    exclude_seen: bool = False
    wide: bool = False

    def __post_init__(self) -> None:
        if (self.experiment is None) == (self.bundle is None):
            self.bad("give exactly one of experiment and bundle")
        for name in ("experiment", "bundle", "out", "users"):
            value = getattr(self, name)
            if (value is not None or name in ("out", "users")) and (not isinstance(value, str) or not value):
                self.bad(f"{name} is not a non-empty string")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            self.bad("k is not a whole number of at least 1")
        if not isinstance(self.exclude_seen, bool) or not isinstance(self.wide, bool):
            self.bad("exclude_seen and wide are not true or false")


def start_job(name: str, spec: PredictJob) -> dict[str, Any]:
    """Write the job's spec into a new job folder and start it detached; the launcher's status once recorded."""
    from mlconnect.layout import experiment_paths
    from mlconnect.runs import launcher, store

    if not name or name.startswith(".") or "/" in name:
        raise ExperimentError(f"invalid job name {name!r}", "use a plain folder name")
    paths = experiment_paths(name, base=store.experiments_dir("."))
    if paths.root.exists():
        raise ExperimentError(f"{paths.root} already exists", "pick another job name")
    paths.root.mkdir(parents=True)
    spec_file = (paths.root / JOB_SPEC).resolve()
    atomic_write_text(spec_file, spec.to_json() + "\n")
    run_id = launcher.new_run_id()
    argv = [sys.executable, "-X", f"{launcher.MARKER}{run_id}", "-m", JOBS, "run", str(spec_file)]
    source = f"--bundle {spec.bundle}" if spec.bundle else spec.experiment
    described = f"mlconnect predict {source} --out {spec.out} --users {spec.users} --k {spec.k}" + \
        "".join(f for f, on in ((" --exclude-seen", spec.exclude_seen), (" --wide", spec.wide)) if on)
    return {"job": name, **launcher.start_run(paths, argv, run_id=run_id, described=described)}


def run_job(spec_file: str) -> None:
    """The job itself (under the supervisor): what ``mlconnect predict`` does, with its output lines."""
    from mlconnect.deploy.predict import Source, predict
    from mlconnect.layout import experiment_paths

    spec = PredictJob.from_json(Path(spec_file).read_bytes())
    source = (Source.from_bundle(spec.bundle) if spec.bundle  # the bundle's digests are checked again here
              else Source.from_experiment(experiment_paths(spec.experiment).root))
    res = predict(source, spec.out, users=spec.users, k=spec.k, exclude_seen=spec.exclude_seen, wide=spec.wide)
    print(f"{res['users']:,} users, {res['rows']:,} rows in {res['seconds']:.1f} s "
          f"({res['users_per_s']:,.0f} users/s, {res['device']})", file=sys.stderr, flush=True)
    print(res["out"], flush=True)


def export_here(name: str, out: str, fmt: str, docker: bool) -> dict[str, Any]:
    """``export --host``'s host side: the bundle into ``out`` (in the project), as ``export --json`` says it."""
    from mlconnect.deploy.export import export_bundle
    from mlconnect.layout import check_experiment_name, experiment_paths

    card = export_bundle(experiment_paths(check_experiment_name(name)).root, out, fmt=fmt, docker=docker,
                         log=lambda m: print(m, file=sys.stderr))
    return {"out": out, "verification": card["verification"], "files": card["files"], "mlflow": card.get("mlflow")}


def main(argv: list[str] | None = None) -> int:
    """``python -m mlconnect.deploy.jobs start --json --spec - NAME`` / ``export --json --out DIR [--format F]
    [--docker] NAME``: the agent protocol (one JSON document; a refusal is exit 3). ``run SPEC_FILE``: the
    job under its supervisor (an error is one line, as the CLI's)."""
    from mlconnect.runs.agent import reply

    p = argparse.ArgumentParser(prog="python -m mlconnect.deploy.jobs")
    p.add_argument("verb", choices=["start", "export", "run"])
    p.add_argument("--json", action="store_true", help="accepted for symmetry: output is JSON")
    p.add_argument("--spec", help="start: the PredictJob as JSON; - reads stdin")
    p.add_argument("--out")
    p.add_argument("--format", default="onnx")
    p.add_argument("--docker", action="store_true")
    p.add_argument("name", help="the job (start), the experiment (export) or the job's spec file (run)")
    a = p.parse_args(argv)
    if a.verb == "export":
        return reply(lambda: export_here(a.name, a.out, a.format, a.docker))
    if a.verb == "start":
        return reply(lambda: start_job(a.name, PredictJob.from_json(sys.stdin.read() if a.spec == "-" else a.spec)))
    try:
        run_job(a.name)
    except MlconnectError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


# -- laptop side --------------------------------------------------------------------------------

def _rsync(target: Any, src: str, dest: str, *flags: str, what: str, then: str) -> None:
    """One rsync between here and the box; a failure is one line (``what`` failed, check, ``then``)."""
    argv = ["rsync", "-rlt", *flags, "-e", target.rsync_rsh(), src, dest]
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=3600)
    if proc.returncode != 0:
        raise RemoteError(f"rsync of {what} failed (exit {proc.returncode})",
                          f"check the connection with `mlconnect status`, then {then}",
                          command=argv, returncode=proc.returncode, stderr=proc.stderr)


def predict_on_host(target: Any, name: str | None, out: str, bundle: Path | None = None,
                    **options: Any) -> dict[str, Any]:
    """Start ``predict NAME`` (or ``--bundle``: a local bundle, uploaded first) detached on the box; its
    output lands in experiments/<job>/<out's name>. ``options``: predict's ``users``, ``k``,
    ``exclude_seen``, ``wide``."""
    remote_bundle = upload_bundle(target, bundle) if bundle is not None else None
    job = job_name("predict", Path(remote_bundle).name if remote_bundle else str(name))
    spec = PredictJob(experiment=None if remote_bundle else name, bundle=remote_bundle,
                      out=f"experiments/{job}/{Path(out).name}", **options)
    st = target.agent("start", "--spec", "-", job, input=spec.to_json(), timeout=60, module=JOBS)
    return {**st, "remote_out": spec.out}


def upload_bundle(target: Any, bundle: Path) -> str:
    """rsync a local bundle (checked here first) to ``bundles/<experiment>-<card digest>/`` on the box; the
    remote path, relative to its project root. The folder is named by the card's sha256, which covers every
    file's, so the same bundle is sent once and another never overwrites it; the job checks it again."""
    from mlconnect.deploy.bundle import CARD, Bundle, sha256_file

    b = Bundle.load(bundle)
    rel = f"bundles/{Path(str(b.card['experiment'])).name}-{sha256_file(b.root / CARD)[:12]}"
    cp = target.run(["mkdir", "-p", "bundles"], timeout=60, check=False)  # no --mkpath on macOS's rsync
    if cp.returncode != 0:
        raise RemoteError(f"cannot create bundles/ on {target.name} (exit {cp.returncode})",
                          "check the box with `mlconnect doctor`", returncode=cp.returncode, stderr=cp.stderr)
    dest = target.rsync_path(f"{target.remote_root.rstrip('/')}/{rel}") + "/"
    _rsync(target, f"{b.root}/", dest, "--delete", what=f"{bundle} to {target.name}", then="run predict again")
    return rel


def export_on_host(target: Any, name: str, out: Path, args: list[str]) -> dict[str, Any]:
    """Export on the box (foreground), then rsync the bundle into ``out`` (a temp folder renamed at the end)."""
    if out.exists():
        raise ExperimentError(f"{out} already exists", "choose another --out, or remove that folder first")
    remote_dir = f"experiments/{name}/exports/{time.strftime('%Y%m%d-%H%M%S')}"
    result = target.agent("export", "--out", remote_dir, *args, name, timeout=3600, module=JOBS)  # NAME last
    result.pop("mlconnect_version", None)
    result.pop("mlconnect_build", None)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    src = target.rsync_path(f"{target.remote_root.rstrip('/')}/{remote_dir}") + "/"
    try:
        _rsync(target, src, f"{tmp}/", "--partial", what=f"the bundle from {target.name}", then="export again")
        from mlconnect.deploy.bundle import Bundle

        Bundle.load(tmp)  # every file arrived intact (sha256s), before it gets the final name
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**result, "out": str(out), "remote_dir": remote_dir}


if __name__ == "__main__":
    sys.exit(main())
