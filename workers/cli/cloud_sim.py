"""``coexist cloud-sim``: run the cloud ERP simulator (a reference system) until SIGTERM.

Bearer tokens come from the configuration only (``COEXIST_SIM_TOKENS`` =
``client:token,client:token``), never from the command line, so they do not show in
the process list.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click


@click.command("cloud-sim")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Port; 0 picks a free one.")
@click.option("--db", "db_path", required=True, type=click.Path(dir_okay=False),
              help="SQLite file holding the simulator's data (created if missing).")
@click.option("--faults", default="", help="Fault settings: JSON or key=value,... "
              "(error_rate, error_after_rate, timeout_rate, drop_rate, latency_ms, burst_429, "
              "retry_after_s, hang_s, scope, next, seed).")
@click.option("--rate-limit", "rate_per_s", default=0.0, show_default=True,
              type=click.FloatRange(min=0),
              help="Requests per second per client (0 = unlimited); 429 + Retry-After beyond.")
@click.option("--burst", default=0.0, type=click.FloatRange(min=0),
              help="Token bucket size per client (default: one second).")
@click.pass_obj
def cloud_sim(app, host: str, port: int, db_path: str, faults: str, rate_per_s: float,
              burst: float) -> None:
    """Serve the cloud ERP simulator's API; print the bound URL as the first stdout line.

    The simulator stands in for the cloud ERP in the demo and the tests (ETag/If-Match,
    Idempotency-Key, paging, $batch, change feed, rate limits, injectable faults); point
    COEXIST_CLOUD_URL at the URL it prints.
    """
    from workers.cloud_sim.app import CloudSimulator
    from workers.cloud_sim.faults import FaultSpecError, parse_faults
    from workers.cloud_sim.store import Store

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        fault_settings = parse_faults(faults)
    except FaultSpecError as exc:
        raise click.BadParameter(str(exc), param_hint="--faults") from None
    tokens = app.settings.sim_token_map()
    store = Store(db_path)
    sim = CloudSimulator(store, faults=fault_settings, tokens=tokens, rate_per_s=rate_per_s,
                         burst=burst)
    try:
        asyncio.run(_serve(sim, host, port))
    finally:
        store.close()


async def _serve(sim, host: str, port: int) -> None:
    from workers.cloud_sim.http import serve

    server = await serve(sim, host, port)
    bound_host, bound_port = server.sockets[0].getsockname()[:2]
    sim.base_url = f"http://{bound_host}:{bound_port}"
    print(sim.base_url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
