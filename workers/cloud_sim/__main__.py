"""``python -m workers.cloud_sim``: run the cloud ERP simulator until SIGTERM/SIGINT.

Bearer tokens come from the environment only (``COEXIST_SIM_TOKENS`` =
``client:token,client:token``), never from the command line, so they do not
show in the process list.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click

from workers.cloud_sim.app import CloudSimulator
from workers.cloud_sim.faults import FaultSpecError, parse_faults
from workers.cloud_sim.http import serve
from workers.cloud_sim.store import Store


def _tokens_from_env() -> dict[str, str]:
    raw = os.environ.get("COEXIST_SIM_TOKENS", "")
    tokens: dict[str, str] = {}
    for i, pair in enumerate(p for p in raw.split(",") if p.strip()):
        client, sep, token = pair.strip().partition(":")
        if not sep or not client or not token:
            raise click.UsageError(f"COEXIST_SIM_TOKENS entry {i + 1} is not client:token")
        tokens[token] = client
    return tokens


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
              help="SQLite file holding the simulator's data (created if missing).")
@click.option("--faults", default="", help="Fault settings: JSON or key=value,... "
              "(error_rate, error_after_rate, timeout_rate, drop_rate, latency_ms, burst_429, "
              "retry_after_s, hang_s, scope, next, seed).")
@click.option("--rate-limit", "rate_per_s", default=0.0, show_default=True,
              help="Requests per second per client (0 = unlimited); 429 + Retry-After beyond.")
@click.option("--burst", default=0.0, help="Token bucket size per client (default: one second).")
def main(host: str, port: int, db_path: str, faults: str, rate_per_s: float, burst: float):
    """Serve the cloud ERP API; print the bound URL as the first stdout line."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        fault_settings = parse_faults(faults)
    except FaultSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from None
    if rate_per_s < 0 or burst < 0:
        raise click.BadParameter("must not be negative", param_hint="--rate-limit/--burst")
    store = Store(db_path)
    app = CloudSimulator(store, faults=fault_settings, tokens=_tokens_from_env(),
                         rate_per_s=rate_per_s, burst=burst)
    asyncio.run(_run(app, host, port))
    store.close()


async def _run(app: CloudSimulator, host: str, port: int) -> None:
    server = await serve(app, host, port)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    app.base_url = f"http://{bound_host}:{bound_port}"
    print(app.base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    main()
