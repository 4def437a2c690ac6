"""``coexist run`` / ``coexist router`` / ``coexist worker``: the long-running processes.

* ``run``: router (change capture of both ERPs + outbox relay), the worker
  threads and the portal's webhook dispatcher in one process; the embedded default on
  one machine.
* ``router``: capture + relay only.  Run as many as availability needs (on one
  host or several): one captures each ERP at a time, the others stand by and take
  over within ``--capture-lease-s`` (+1 s) of its end (``workers.router.lease``).
* ``worker``: dramatiq worker threads for the router's queues; run as many as
  throughput needs (supervisord ``numprocs``).

``run`` and ``worker`` also run the polling loops of the channels they consume: with
``[[edi.partners]]`` and ``[subscriptions.edi]`` configured, the partners' ``inbound/``
folders every ``COEXIST_EDI_POLL_S`` seconds (``workers.edi.consumer``).

Each one opens everything it needs at start (state database, broker, Redis, both ERPs,
the configured channel subscriptions), so a wrong setting ends it at once with one line
naming the setting and exit 2, which supervisord reports as a failed start.  All three
stop gracefully on SIGTERM (exit 0) and SIGINT (exit 130): capture finishes its batch, the
relay its publish, workers the messages they hold; nothing in flight is lost (unacked
messages go back to their queue).
"""

from __future__ import annotations

import logging
import signal
import threading

import click

from workers.errors import EXIT_INTERRUPTED

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Stop:
    """Set by SIGTERM or SIGINT while the process runs; remembers which, for the exit code.
    Installed before anything else, so that a SIGTERM while the process is still starting
    (supervisord's ``startsecs`` can pass first on a loaded host) stops it gracefully once
    started, instead of killing it with the signal's default action; the previous handlers
    are put back when the command ends."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _Stop:
        def handle(signum, _frame):
            logging.getLogger("coexist").info("signal %s: stopping gracefully", signum)
            self.signum = signum
            self.event.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def exit(self, ctx: click.Context) -> None:
        if self.signum == signal.SIGINT:
            ctx.exit(EXIT_INTERRUPTED)


#: ``--metrics-port``: Prometheus metrics (``workers.metrics_server``) on 127.0.0.1, off by
#: default.
_METRICS_PORT = click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
                             help="Serve Prometheus metrics on 127.0.0.1:PORT (default: off).")
_LOG_LEVEL = click.option("--log-level", default="INFO", show_default=True,
                          type=click.Choice(LOG_LEVELS, case_sensitive=False))
#: ``--capture-lease-s``: how long a stopped router keeps its capture from the standbys.
_LEASE = click.option("--capture-lease-s", "lease_s", type=click.FloatRange(1, 300),
                      default=None,
                      help="A router that stops renewing its capture lease (killed, paused, "
                           "cut off) loses it to a standby router after this many seconds "
                           "(default: 5).")


def _threads(default: int):
    return click.option("--threads", default=default, show_default=True,
                        type=click.IntRange(min=1), help="Worker threads in this process.")


def _serve_metrics(port: int | None, app) -> None:
    if port is not None:
        from workers import metrics_server

        metrics_server.serve(port, app)


def _start_worker(app, threads: int):
    import dramatiq

    worker = dramatiq.Worker(app.broker, worker_threads=threads, worker_timeout=500,
                             queues=app.consumed_queues())
    worker.start()
    return worker


def _start_channel_loops(app, stop: threading.Event) -> list[threading.Thread]:
    """The polling loops of the channels this process runs (EDI: the partners' folders;
    CRM: its change feed, one holder at a time across processes under a lease)."""
    from workers.crm.consumer import start_poller as crm_poller
    from workers.edi.consumer import start_poller as edi_poller

    return [t for t in (edi_poller(app, stop), crm_poller(app, stop)) if t is not None]


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)


def _started(app, log_level: str, *, create_state: bool = False):
    from bus.context import configure_logging
    from workers.bootstrap import start

    configure_logging(log_level)
    return start(app, create_state=create_state)


@click.command("run")
@_threads(4)
@_LOG_LEVEL
@_METRICS_PORT
@_LEASE
@click.pass_context
def run(ctx: click.Context, threads: int, log_level: str, metrics_port: int | None,
        lease_s: float | None) -> None:
    """Router and workers in one process (the embedded default), until SIGTERM."""
    from workers.bootstrap import run_router

    with _Stop() as stop:
        # The embedded default's first start may create a new, empty SQLite state database.
        app = _started(ctx.obj, log_level, create_state=True)
        _serve_metrics(metrics_port, app)
        # The portal's webhook dispatcher (what `coexist portal deliver` runs on its own).
        from workers.portal.process import Delivery

        portal = Delivery(app, threads=4)
        worker = _start_worker(app, threads)
        loops = _start_channel_loops(app, stop.event)
        portal.start(stop.event)
        try:
            run_router(app, stop.event, lease_s=lease_s)
        finally:
            stop.event.set()
            worker.stop()
            _join(loops)
            portal.close()
            app.close()
    stop.exit(ctx)


@click.command("router")
@_LOG_LEVEL
@_METRICS_PORT
@_LEASE
@click.pass_context
def router(ctx: click.Context, log_level: str, metrics_port: int | None,
           lease_s: float | None) -> None:
    """Change capture of both ERPs and the outbox relay, until SIGTERM."""
    from workers.bootstrap import run_router

    with _Stop() as stop:
        app = _started(ctx.obj, log_level)
        _serve_metrics(metrics_port, app)
        try:
            run_router(app, stop.event, lease_s=lease_s)
        finally:
            app.close()
    stop.exit(ctx)


@click.command("worker")
@_threads(8)
@_LOG_LEVEL
@_METRICS_PORT
@click.pass_context
def worker(ctx: click.Context, threads: int, log_level: str, metrics_port: int | None) -> None:
    """Worker threads for the router's queues (writers, commands, reports), until SIGTERM."""
    with _Stop() as stop:
        app = _started(ctx.obj, log_level)
        _serve_metrics(metrics_port, app)
        w = _start_worker(app, threads)
        loops = _start_channel_loops(app, stop.event)
        try:
            stop.event.wait()
        finally:
            stop.event.set()
            w.stop()
            _join(loops)
            app.close()
    stop.exit(ctx)
