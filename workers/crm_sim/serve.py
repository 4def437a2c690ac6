"""Serve the CRM simulator until SIGTERM/SIGINT (``python -m workers.crm_sim``,
``coexist crm-sim``).

OAuth clients come from the environment only (``COEXIST_CRM_SIM_CLIENTS`` =
``client_id:secret,client_id:secret``), never from the command line, so secrets do not
show in the process list.  Without it any client id gets a token (the demo's open mode).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys

import click

from workers.cloud_sim.http import HttpProtocol
from workers.crm_sim.app import (
    DEFAULT_DAILY_LIMIT,
    DEFAULT_RETENTION_S,
    DEFAULT_SESSION_TTL_S,
    CrmSimulator,
)
from workers.crm_sim.faults import FaultSpecError, parse_faults
from workers.crm_sim.store import Store


def clients_from_env() -> dict[str, str]:
    from workers.config import ConfigError, Settings

    try:
        secret = Settings.from_env().crm_sim_clients  # the one configuration
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    raw = secret.get_secret_value() if secret else ""
    clients: dict[str, str] = {}
    for i, pair in enumerate(p for p in raw.split(",") if p.strip()):
        client, sep, secret = pair.strip().partition(":")
        if not sep or not client or not secret:
            raise click.UsageError(f"COEXIST_CRM_SIM_CLIENTS entry {i + 1} is not client:secret")
        clients[client] = secret
    return clients


@click.command("crm-sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
              help="SQLite file holding the CRM's data (created if missing).")
@click.option("--faults", default="", help="Fault settings as a JSON object (see "
              "workers/crm_sim/faults.py).")
@click.option("--daily-limit", default=DEFAULT_DAILY_LIMIT, show_default=True,
              help="API requests allowed per rolling 24 hours.")
@click.option("--session-ttl-s", default=DEFAULT_SESSION_TTL_S, show_default=True,
              help="Seconds an access token stays valid.")
@click.option("--retention-s", default=DEFAULT_RETENTION_S, show_default=True,
              help="Seconds change events are kept for replay.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate: serve HTTPS (clients that insist on https).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False),
              help="PEM private key of --tls-cert.")
def main(host: str, port: int, db_path: str, faults: str, daily_limit: int,
         session_ttl_s: float, retention_s: float, tls_cert: str | None,
         tls_key: str | None) -> None:
    """Serve the reference CRM (Salesforce REST semantics); print the URL as the first line."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        fault_settings = parse_faults(faults)
    except FaultSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from None
    if daily_limit < 0 or session_ttl_s <= 0 or retention_s <= 0:
        raise click.BadParameter("limits, session TTL and retention must be positive")
    if bool(tls_cert) != bool(tls_key):
        raise click.BadParameter("give both --tls-cert and --tls-key", param_hint="--tls-key")
    context = None
    if tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls_cert, tls_key)
    store = Store(db_path)
    app = CrmSimulator(store, faults=fault_settings, clients=clients_from_env(),
                       daily_limit=daily_limit, session_ttl_s=session_ttl_s,
                       retention_s=retention_s)
    asyncio.run(_run(app, host, port, context))
    store.close()


async def _run(app: CrmSimulator, host: str, port: int, context: ssl.SSLContext | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(app), host, port, backlog=512,
                                      ssl=context)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    scheme = "https" if context else "http"
    app.base_url = f"{scheme}://{bound_host}:{bound_port}"
    print(app.base_url, flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()

