"""The bundle server: the recommendation API of ``mlconnect serve`` from a bundle, torch-free.

It is serving/api.py's app (same routes, schema, limits, API key, micro-batching) with the engine
swapped for :class:`BundleRecommender`, which scores with ONNX Runtime and numpy. Nothing here or
in what it imports loads torch or mlconnect.engine (tests/integration/test_deploy_docker.py runs it
in a venv that has no torch), which is what lets the serving image stay small.

``python -m mlconnect.deploy.server --bundle DIR`` is the Docker image's command;
``mlconnect serve --bundle DIR`` calls :func:`serve_bundle` too.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from mlconnect.deploy.bundle import Bundle, BundleError, Scorer, pad_batch
from mlconnect.errors import MlconnectError, UsageError
from mlconnect.serving.listen import LoadErrors, bind_socket, run_server

DEFAULT_KEY_ENV = "MLCONNECT_API_KEY"


class BundleRecommender:
    """The serving interface of engine.inference.Recommender, over a bundle."""

    def __init__(self, bundle: Bundle, threads: int | None = None, cpu: bool = False) -> None:
        self.bundle = bundle
        # Like `serve NAME`: leave a core to the event loop that parses HTTP (serve_bench.py measures it).
        threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self.scorer = Scorer(bundle.root / bundle.card["model_file"], threads=threads, spin=False, cpu=cpu)
        self.item_ids, self.max_len = bundle.item_ids, bundle.max_len
        self.known_items = set(bundle.item_index)
        self.known_users = set(bundle.user_index)
        card = bundle.card
        self.info = {"experiment": card["experiment"], "model": card["model"], "dataset": card["dataset"],
                     "metrics": card["metrics"], "created": card["created"], "n_items": card["n_items"],
                     "bundle": {"format": card["format"], "mlconnect_version": card["mlconnect_version"],
                                "git_commit": card["git_commit"], "runtime": f"onnxruntime ({self.scorer.device})"}}

    def user_history(self, user_id: str) -> list[str]:
        ids = self.item_ids
        return [ids[i] for i in self.bundle.history(self.bundle.user_index[str(user_id)])]

    def item_metadata(self, item_id: str) -> dict[str, Any]:
        return dict(self.bundle.items_meta.get(str(item_id), {}))

    def recommend(self, histories: list[list[str]], k: int = 10,
                  exclude_seen: bool = True) -> list[list[tuple[str, float]]]:
        """Raw item ids in, ``[(item_id, score), ...]`` per history out (best first), like the engine."""
        index = self.bundle.item_index
        internal = [[index[str(i)] for i in h] for h in histories]
        items, seen = pad_batch(internal, self.max_len, trim=self.bundle.trim, slot=self.bundle.slot)
        if not exclude_seen:
            seen = np.zeros((len(internal), 1), dtype=np.int64)  # padding only: it scores -inf anyway
        k = min(k, len(self.item_ids) - 1)
        scores, ids = self.scorer.topk(items, seen, k)
        out = []
        for vals, idx in zip(scores.tolist(), ids.tolist()):
            out.append([(self.item_ids[i], float(v)) for v, i in zip(vals, idx) if v != float("-inf")])
        return out


def check_device(device: str | None) -> bool:
    """``--device`` for a bundle: None picks CUDA when this onnxruntime has it, else the CPU (as Scorer
    does); ``cpu`` forces the CPU; ``cuda`` must be there. Returns whether to stay on the CPU."""
    if device in (None, "cpu"):
        return device == "cpu"
    if device == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MlconnectError("this onnxruntime has no CUDA provider",
                                 "use --device cpu, or pip install onnxruntime-gpu on a machine with a GPU")
        return False
    if device == "mps":
        raise UsageError("--device mps: a bundle runs on ONNX Runtime, which has no MPS provider",
                         "use --device cpu (or cuda)")
    raise UsageError(f"unknown device {device!r}", "use one of cpu, cuda")


def check_limits(limits: dict[str, Any]) -> None:
    """The request limits, before the server starts (build_app would only fail once it loads)."""
    for key, least in (("max_batch", 1), ("max_items", 1), ("max_body_bytes", 1024), ("threads", 1)):
        value = limits.get(key)
        if value is not None and value < least:
            raise UsageError(f"--{key.replace('_', '-')} {value} is too small", f"use --{key.replace('_', '-')} "
                             f">= {least}")


def create_bundle_app(bundle_dir: str | os.PathLike[str], *, threads: int | None = None, cpu: bool = False,
                      **kwargs: Any) -> Any:
    """serving.api's FastAPI app over a bundle. The bundle is verified here, before the app exists, so a
    tampered bundle fails the command with one line rather than a 503 later."""
    from mlconnect.serving.api import build_app

    def loader() -> tuple[BundleRecommender, Any]:
        rec = BundleRecommender(bundle, threads=threads, cpu=cpu)
        return rec, rec.recommend

    bundle = Bundle.load(bundle_dir)
    if bundle.card["format"] != "onnx":  # a torch.export program needs torch: not this server's runtime
        raise BundleError(f"{bundle.root} is a --format {bundle.card['format']} bundle; the bundle server runs "
                          "ONNX", "export it with --format onnx, or score it with `mlconnect predict --bundle`")
    app = build_app(bundle.root, loader=loader, **kwargs)
    app.state.served.name = bundle.card["experiment"]  # answers name the experiment, as `serve NAME` does
    return app


def serve_bundle(bundle_dir: str | os.PathLike[str], *, bind: str = "127.0.0.1", port: int = 8000,
                 api_key: str | None = None, threads: int | None = None, device: str | None = None,
                 log: Any = print, **limits: Any) -> None:
    """Serve a bundle under uvicorn until stopped (SIGTERM/Ctrl-C: graceful)."""
    check_limits({**limits, "threads": threads})
    cpu = check_device(device)
    errors = LoadErrors()
    app = create_bundle_app(bundle_dir, threads=threads, cpu=cpu, api_key=api_key, on_load_error=errors, **limits)
    sock = bind_socket(bind, port, hint="check --bind and --port")
    log(f"serving bundle {Path(bundle_dir).resolve()} on http://{bind}:{sock.getsockname()[1]}; Ctrl-C to stop")
    run_server(app, sock, errors, access_log=False)
    if errors.reasons:
        raise BundleError(f"could not load the bundle {bundle_dir}: {errors.reasons[0]}", "export it again")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad option is one ``error: ... — ...`` line like every mlconnect error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} — see `{self.prog} --help`\n")


def _int_in(least: int, most: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is below {least}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{value} is above {most}")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    """The image's entry point (no typer, no torch): ``python -m mlconnect.deploy.server``."""
    p = _Parser(prog="python -m mlconnect.deploy.server", description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default=".", help="bundle folder (default: the working directory)")
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--port", type=_int_in(0, 65535), default=8000, help="0..65535 (0: any free port)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help=f"require X-API-Key equal to $VAR (default: ${DEFAULT_KEY_ENV} when set)")
    p.add_argument("--threads", type=_int_in(1), default=None, help="ONNX Runtime intra-op threads")
    # The same ranges as `mlconnect serve` (cli/serve.py).
    p.add_argument("--max-batch", type=_int_in(1, 4096), default=64)
    p.add_argument("--max-items", type=_int_in(1), default=1000)
    p.add_argument("--max-body-bytes", type=_int_in(1024), default=1 << 20)
    a = p.parse_args(argv)
    key = os.environ.get(a.api_key_env) if a.api_key_env else os.environ.get(DEFAULT_KEY_ENV)
    try:
        if a.api_key_env and not key:
            raise MlconnectError(f"--api-key-env {a.api_key_env}: that variable is empty or unset",
                                 f"set {a.api_key_env} to a long random key")
        serve_bundle(a.bundle, bind=a.bind, port=a.port, api_key=key or None, threads=a.threads,
                     log=lambda m: print(m, file=sys.stderr, flush=True), max_batch=a.max_batch,
                     max_items=a.max_items, max_body_bytes=a.max_body_bytes)
    except MlconnectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
