"""`mlconnect tunnel`: plain SSH local forwards to services on the host's 127.0.0.1."""

from __future__ import annotations

import contextlib

import typer

from mlconnect.cli.common import HostOpt, JsonOpt, SshConfigOpt, info, print_json, target_from


def register(app: typer.Typer) -> None:
    app.command("tunnel")(tunnel)


def tunnel(
    port: list[int] = typer.Option(..., "--port", "-p", help="A port on the host's 127.0.0.1; repeatable."),
    host: str = HostOpt,
    ssh_config: str = SshConfigOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Forward host ports to this machine's 127.0.0.1 (the same port, or the next free one); Ctrl-C closes."""
    from mlconnect.errors import UsageError
    from mlconnect.remote.tunnel import hold_tunnel, open_tunnel, signals_interrupt

    target = target_from(host, ssh_config)
    if target.is_local:
        raise UsageError("no host: the services are already on this machine", "pass --host NAME")
    with contextlib.suppress(KeyboardInterrupt), signals_interrupt():  # SIGTERM/SIGHUP end it as Ctrl-C does
        t = open_tunnel(target, list(port))
        try:
            rows = [{"local": f"http://127.0.0.1:{lp}", "remote_port": rp} for lp, rp in t.pairs]
            if as_json:
                print_json(rows)
            for r in rows:
                info(f"{r['local']}  ->  {target.name}:127.0.0.1:{r['remote_port']}")
            info("Ctrl-C closes the tunnel (it reconnects by itself after a dropped connection)")
            hold_tunnel(target, t, info)
        finally:
            t.close()
