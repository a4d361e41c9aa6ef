"""``mlconnect serve NAME``: the experiment's recommendation API under uvicorn (parse and print only).

Here: ``serving.lifecycle.serve_local`` binds 127.0.0.1:8000 (``--bind`` to change) until Ctrl-C or
SIGTERM. With ``--host`` (or a project default host): ``serving.hosted.serve_remote`` starts the same
server on the box's 127.0.0.1 (serving's entry point, on a ServeSpec) and forwards this machine's
127.0.0.1:PORT to it; the URL printed on stdout says which port. Each way of serving is one
function below, picked by ``serve``.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from mlconnect.cli.common import HostOpt, SshConfigOpt, info, target_from
from mlconnect.errors import UsageError
from mlconnect.serving.lifecycle import DEFAULT_KEY_ENV, LIMITS


def _announce(url: str) -> None:
    typer.echo(url)  # stdout: the URL, for people and scripts alike
    sys.stdout.flush()


def _serve_on_host(name: str, target: Any, bind: str, port: int, remote_port: int | None,
                   device: str, api_key: str | None, access_log: bool, limits: dict) -> None:
    from mlconnect.serving.hosted import serve_remote

    if bind != "127.0.0.1":
        raise UsageError("--bind applies to local serving only",
                         "on the host the server always binds 127.0.0.1; it is reached through the tunnel")
    if port == 0:
        raise UsageError("--port 0 applies to local serving only", "pick a port on this machine, e.g. 8000")
    serve_remote(target, name, port=port, remote_port=remote_port, device=device, api_key=api_key,
                 access_log=access_log, limits=limits, log=info, announce=_announce)


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        name: str | None = typer.Argument(None, help="Experiment name (experiments/NAME) or folder."),
        bundle: str | None = typer.Option(None, "--bundle", metavar="DIR",
                                          help="Serve an exported bundle instead (ONNX Runtime, no torch)."),
        host: str | None = HostOpt,
        port: int = typer.Option(8000, "--port", min=0, max=65535,
                                 help="Port on this machine (the next free one when busy, with --host; "
                                      "0: any free port, local serving)."),
        bind: str = typer.Option("127.0.0.1", "--bind", help="Address to listen on (local serving)."),
        device: str | None = typer.Option(None, "--device",
                                          help="cpu (default), cuda or mps; with --bundle: cpu or cuda "
                                               "(default: CUDA when ONNX Runtime has it)."),
        api_key_env: str | None = typer.Option(None, "--api-key-env", metavar="VAR",
                                               help=f"Require X-API-Key equal to $VAR (default: "
                                                    f"${DEFAULT_KEY_ENV} when set)."),
        max_batch: int = typer.Option(LIMITS["max_batch"], "--max-batch", min=1, max=4096,
                                      help="Requests per /recommend/batch and sequences per forward."),
        max_items: int = typer.Option(LIMITS["max_items"], "--max-items", min=1, help="Ids per sequence."),
        max_body_bytes: int = typer.Option(LIMITS["max_body_bytes"], "--max-body-bytes", min=1024,
                                           help="Request body limit."),
        batch_wait_ms: float = typer.Option(LIMITS["batch_wait_ms"], "--batch-wait-ms", min=0.0, max=50.0,
                                            help="Wait this long to collect concurrent requests into "
                                                 "one forward (0: batch only what is already queued)."),
        access_log: bool = typer.Option(False, "--access-log/--no-access-log", help="Log every request."),
        remote_port: int | None = typer.Option(None, "--remote-port", min=1, max=65535,
                                               help="Port on the host's 127.0.0.1 (default: any free one)."),
        ssh_config: str | None = SshConfigOpt,
    ) -> None:
        """Serve an experiment as a recommendation API (FastAPI + uvicorn)."""
        from mlconnect.serving.lifecycle import read_api_key, serve_local

        limits = dict(max_batch=max_batch, max_items=max_items, max_body_bytes=max_body_bytes,
                      batch_wait_ms=batch_wait_ms)
        if (name is None) == (bundle is None):
            raise UsageError("give an experiment NAME or --bundle DIR", "exactly one of the two")
        if bundle is not None:  # mlconnect.deploy: here only, like the image's command
            from mlconnect.deploy.server import serve_bundle

            if host not in (None, "local"):
                raise UsageError("--bundle serves on this machine", "copy the bundle to the box and serve it there")
            serve_bundle(bundle, bind=bind, port=port, api_key=read_api_key(api_key_env), device=device,
                         log=lambda m: typer.echo(m, err=True), **limits)
            return
        device = device or "cpu"
        api_key = read_api_key(api_key_env)
        target = target_from(host, ssh_config)  # the one "is this host this machine" rule
        if target.is_local:
            serve_local(name, bind=bind, port=port, device=device, api_key=api_key, access_log=access_log,
                        log=info, **limits)
            return
        _serve_on_host(name, target, bind, port, remote_port, device, api_key, access_log, limits)
