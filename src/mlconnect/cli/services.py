"""`mlconnect tensorboard` / `mlconnect jupyter`: a service on the host's 127.0.0.1, tunnelled here.

With a host: the agent starts the service on the box (or reuses the running one), then an SSH local
forward (``ExitOnForwardFailure``; the wanted local port or the next free one) stays in the
foreground until Ctrl-C. The service keeps running on the box after Ctrl-C, so the next call
attaches in a second; ``--stop`` ends it. With no host: the service starts here and the command
returns at once.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from typing import Any, Optional

import typer

from mlconnect.cli.common import HostOpt, JsonOpt, SshConfigOpt, info, print_json, target_from

START_TIMEOUT_S = 120  # the agent waits up to 60 s for the service to answer; ssh on top of that


def register(app: typer.Typer) -> None:
    app.command("tensorboard")(_command(
        "tensorboard", 6006, "the TensorBoard",
        "TensorBoard over the experiments on the host, at http://localhost:6006 through an SSH tunnel.",
        name_help="One experiment; default: every run in experiments/."))
    app.command("jupyter")(_command(
        "jupyter", 8888, "the Jupyter Lab",
        "Jupyter Lab in the project on the host (token auth), at http://localhost:8888 through an SSH tunnel."))


def _command(service: str, port: int, what: str, doc: str, name_help: str | None = None) -> Callable[..., None]:
    """The command for one service: one list of options for both (they differ in the default port,
    and only TensorBoard takes an experiment name), as the signature typer reads."""
    params: list[tuple[str, Any, Any]] = [] if name_help is None else [
        ("name", Optional[str], typer.Argument(None, help=name_help))]  # noqa: UP045 - a runtime type
    params += [("host", Optional[str], HostOpt), ("ssh_config", Optional[str], SshConfigOpt),  # noqa: UP045
               ("port", int, typer.Option(port, "--port", "-p", help="Local port (the next free one when busy).")),
               ("stop", bool, typer.Option(False, "--stop", help=f"End {what} this command started.")),
               ("no_tunnel", bool, typer.Option(False, "--no-tunnel", help="Start it on the host, open no tunnel.")),
               ("as_json", bool, JsonOpt)]

    def command(**options: Any) -> None:
        run_service(service, options.pop("name", None), **options)

    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=t) for n, t, d in params])
    command.__annotations__ = {n: t for n, t, _ in params}
    command.__doc__, command.__name__ = doc, service
    return command


def run_service(service: str, experiment: str | None, *, host: str | None, ssh_config: str | None, port: int,
                stop: bool, no_tunnel: bool, as_json: bool) -> None:
    target = target_from(host, ssh_config)
    where = "this machine" if target.is_local else target.name
    if stop:
        res = _call(target, "service-stop", service)
        if as_json:
            print_json(res)
        elif res.get("stopped"):
            info(f"stopped {service} (pid {res['pid']}) on {where}")
        else:
            info(f"no {service} was running on {where}")
        return
    if target.is_local:
        # The service itself is here: --port is where it listens (the next free port when busy).
        res = _call(target, "service-start", service, experiment=experiment, port=port)
        moved = not res["reused"] and res["port"] != port
        _announce(service, res, local_port=res["port"], moved_from=port if moved else None, where=where,
                  as_json=as_json)
        return
    res = _call(target, "service-start", service, experiment=experiment)
    if no_tunnel:
        _announce(service, res, local_port=None, moved_from=None, where=where, as_json=as_json)
        info(f"forward it with `mlconnect tunnel --port {res['port']} --host {target.name}`")
        return
    from mlconnect.remote.tunnel import Tunnel, run_tunnel

    def announce(t: Tunnel) -> None:
        local = t.pairs[0][0]
        _announce(service, res, local_port=local, moved_from=port if local != port else None, where=where,
                  as_json=as_json)
        info(f"Ctrl-C closes the tunnel; {service} keeps running on {target.name} "
             f"(`mlconnect {service} --stop --host {target.name}` ends it)")

    run_tunnel(target, [int(res["port"])], [port], on_open=announce, log=info)


def _call(target: Any, verb: str, service: str, *, experiment: str | None = None,
          port: int | None = None) -> dict:
    """The agent verb on the host, or the same library call in-process when there is no host."""
    from mlconnect.runs import services

    if target.is_local:
        from pathlib import Path

        root = Path(target.remote_root)
        if verb == "service-stop":
            return services.stop_service(root, service)
        return services.start_service(root, service, experiment=experiment, port=port)
    args = ["--service", service]
    if experiment:
        args += ["--experiment", experiment]
    if port is not None:
        args += ["--port", str(port)]
    # The agent refusing on purpose (jupyterlab missing, unknown experiment): AgentRefused, its own words.
    return target.agent(verb, *args, timeout=START_TIMEOUT_S)


def _announce(service: str, res: dict, *, local_port: int | None, moved_from: int | None, where: str,
              as_json: bool) -> None:
    """The URL on stdout (for people and scripts alike); how it got there on stderr."""
    path = res.get("url_path") or "/"
    url = f"http://localhost:{local_port}{path}" if local_port else None
    if as_json:
        print_json({"service": service, "url": url, "local_port": local_port, "remote_port": res["port"],
                    "pid": res["pid"], "reused": res["reused"], "logdir": res.get("logdir"),
                    "host": where, "token": res.get("token")})
    how = "already running" if res["reused"] else "started"
    info(f"{service} {how} on {where} (pid {res['pid']}, 127.0.0.1:{res['port']}"
         + (f", logdir {res['logdir']})" if service == "tensorboard" else ")"))
    if moved_from is not None:
        info(f"port {moved_from} is busy here; using {local_port}")
    if url and not as_json:
        typer.echo(url)
    sys.stdout.flush()  # a script reading our pipe gets the URL now, not when the tunnel closes
