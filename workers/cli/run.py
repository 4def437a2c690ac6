"""``coexist run`` / ``coexist router`` / ``coexist worker``: the long-running processes.

* ``run``: router (change capture of both ERPs + outbox relay) and the worker
  threads in one process; the embedded default on one machine.
* ``router``: capture + relay only.  Run as many as availability needs (on one
  host or several): one captures each ERP at a time, the others stand by and take
  over within ``--capture-lease-s`` (+1 s) of its end (``workers.router.lease``).
* ``worker``: dramatiq worker threads for the router's queues; run as many as
  throughput needs (supervisord ``numprocs``).

All three stop gracefully on SIGTERM/SIGINT: capture finishes its batch, the
relay its publish, workers the messages they hold; nothing in flight is lost
(unacked messages go back to their queue).
"""

from __future__ import annotations

import logging
import signal
import threading

import click
import dramatiq

from bus.context import configure_logging
from workers.config import Settings


def _stop_on_signals() -> threading.Event:
    """Installed before anything else, so that a SIGTERM while the process is still starting
    (supervisord's ``startsecs`` can pass first on a loaded host) stops it gracefully once
    started, instead of killing it with the signal's default action."""
    stop = threading.Event()

    def handle(signum, _frame):
        logging.getLogger("coexist").info("signal %s: stopping gracefully", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


#: ``--metrics-port``: Prometheus metrics (``workers.metrics_server``) on 127.0.0.1, off by
#: default.
_METRICS_PORT = click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
                             help="Serve Prometheus metrics on 127.0.0.1:PORT (default: off).")


#: ``--capture-lease-s``: how long a stopped router keeps its capture from the standbys.
_LEASE = click.option("--capture-lease-s", "lease_s", type=click.FloatRange(1, 300),
                      default=None,
                      help="A router that stops renewing its capture lease (killed, paused, "
                           "cut off) loses it to a standby router after this many seconds "
                           "(default: 5).")


def _serve_metrics(port: int | None, app) -> None:
    if port is not None:
        from workers import metrics_server

        metrics_server.serve(port, app)


def _start_worker(app, threads: int) -> dramatiq.Worker:
    worker = dramatiq.Worker(app.broker, worker_threads=threads, worker_timeout=500)
    worker.start()
    return worker


@click.command("run")
@click.option("--threads", default=4, show_default=True, help="Worker threads in this process.")
@click.option("--log-level", default="INFO", show_default=True)
@_METRICS_PORT
@_LEASE
def run(threads: int, log_level: str, metrics_port: int | None, lease_s: float | None) -> None:
    """Router and workers in one process (the embedded default), until SIGTERM."""
    from workers.bootstrap import bootstrap, run_router

    configure_logging(log_level)
    stop = _stop_on_signals()
    # The embedded default's first start may create a new, empty SQLite state database.
    app = bootstrap(Settings.from_env(), create_state=True)
    _serve_metrics(metrics_port, app)
    worker = _start_worker(app, threads)
    try:
        run_router(app, stop, lease_s=lease_s)
    finally:
        worker.stop()
        app.close()


@click.command("router")
@click.option("--log-level", default="INFO", show_default=True)
@_METRICS_PORT
@_LEASE
def router(log_level: str, metrics_port: int | None, lease_s: float | None) -> None:
    """Change capture of both ERPs and the outbox relay, until SIGTERM."""
    from workers.bootstrap import bootstrap, run_router

    configure_logging(log_level)
    stop = _stop_on_signals()
    app = bootstrap(Settings.from_env())
    _serve_metrics(metrics_port, app)
    try:
        run_router(app, stop, lease_s=lease_s)
    finally:
        app.close()


@click.command("worker")
@click.option("--threads", default=8, show_default=True, help="Worker threads.")
@click.option("--log-level", default="INFO", show_default=True)
@_METRICS_PORT
def worker(threads: int, log_level: str, metrics_port: int | None) -> None:
    """Worker threads for the router's queues (writers, commands, reports), until SIGTERM."""
    from workers.bootstrap import bootstrap

    configure_logging(log_level)
    stop = _stop_on_signals()
    app = bootstrap(Settings.from_env())
    _serve_metrics(metrics_port, app)
    w = _start_worker(app, threads)
    try:
        stop.wait()
    finally:
        w.stop()
        app.close()
