"""``coexist console``: the cutover console, one read-only web page (``workers.console``)."""

from __future__ import annotations

import ipaddress
import socket

import click

from workers.cli.common import UserError


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is only reachable from this machine."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


@click.command("console")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs COEXIST_CONSOLE_TOKEN.")
@click.option("--port", default=8090, show_default=True, type=click.IntRange(0, 65535))
@click.option("--refresh-s", default=5.0, show_default=True, type=click.FloatRange(min=0.5),
              help="How often the page refreshes its panels.")
@click.option("--sample-s", default=15.0, show_default=True, type=click.FloatRange(min=0.5),
              help="How often this process samples queue backlog and capture lag for the "
                   "charts (kept in memory for 6 h).")
@click.option("--log-level", default="warning", show_default=True)
@click.pass_obj
def console(app, host: str, port: int, refresh_s: float, sample_s: float,
            log_level: str) -> None:
    """Serve the cutover console: domains with their guards, exceptions by cause, drift and
    backlog charts, channels, business KPIs and trace search, on one read-only page.

    It reads what `coexist status`, `cutover plan`, `dlq list` and `trace` read (the same
    functions); flag changes stay in the audited CLI.  Stops on SIGTERM or Ctrl-C.
    """
    import uvicorn

    from bus.context import configure_logging
    from workers.console.app import Sampler, create_app

    secret = app.settings.console_token
    token = secret.get_secret_value() if secret is not None else None
    if not is_loopback(host) and not token:
        raise UserError(f"--host {host} is not a loopback address: set COEXIST_CONSOLE_TOKEN "
                        "so that only people with the token can read the console")
    configure_logging(log_level.upper())
    _ = app.state  # a missing or unreadable state database stops here, as one line
    sampler = Sampler(app, sample_s=sample_s)
    sampler.start()
    web = create_app(app, token=token, sampler=sampler, refresh_s=refresh_s)
    click.echo(f"coexist console on http://{host}:{port}/ (read-only; Ctrl-C stops it)",
               err=True)
    try:
        uvicorn.run(web, host=host, port=port, log_level=log_level, access_log=False,
                    lifespan="off")
    finally:
        sampler.stop()
