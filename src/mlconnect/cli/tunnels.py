"""`mlconnect tunnel`: plain SSH local forwards to services on the host's 127.0.0.1."""

from __future__ import annotations

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
    from mlconnect.remote.tunnel import Tunnel, run_tunnel

    target = target_from(host, ssh_config)
    if target.is_local:
        raise UsageError("no host: the services are already on this machine", "pass --host NAME")

    def announce(t: Tunnel) -> None:
        rows = [{"local": f"http://127.0.0.1:{lp}", "remote_port": rp} for lp, rp in t.pairs]
        if as_json:
            print_json(rows)
        for r in rows:
            info(f"{r['local']}  ->  {target.name}:127.0.0.1:{r['remote_port']}")
        info("Ctrl-C closes the tunnel (it reconnects by itself after a dropped connection)")

    run_tunnel(target, list(port), None, on_open=announce, log=info)
