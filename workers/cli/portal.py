"""``coexist portal``: customers' webhook endpoints and the delivery process.

* ``endpoint add|list|disable|enable|rotate-secret|history``: the registry, every
  change audited with actor (``--actor``, else ``COEXIST_ACTOR``/``USER``) and reason;
  ``add`` and ``rotate-secret`` print the new ``whsec_`` secret once, for the customer;
* ``notices``: endpoints disabled or failing (what ``coexist status`` will show);
* ``deliver``: the dispatcher (due deliveries, per-endpoint lanes) and the
  ``portal_redeliver`` actor that ``coexist dlq replay`` sends dead letters back to,
  until SIGTERM.

Exit codes: 0 done; 1 notices exist (``notices``); 2 bad input or an unreachable system.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import signal
import sys
import threading

import click
from rich.console import Console
from rich.table import Table

from bus.errors import BusinessError
from workers.cli.common import UserError

_FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                       show_default=True)
_ACTOR = click.option("--actor", help="Who (default: COEXIST_ACTOR, else USER).")
_REASON = click.option("--reason", required=True, help="Why (kept in the audit).")


def _errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (BusinessError, ValueError) as exc:
            raise UserError(str(exc)) from None

    return wrapper


def _state(ctx: click.Context):
    """The state database of the composition root (``ctx.obj``); a missing one is one line
    naming COEXIST_STATE_URL (the group's edge)."""
    return ctx.obj.state


def _actor(ctx: click.Context, explicit: str | None) -> str:
    return ctx.obj.actor(explicit)


def _row(e) -> dict:
    return {"id": e.id, "customer": e.customer_key, "customers": sorted(e.customers),
            "url": e.url, "event_types": sorted(e.event_types), "status": e.status,
            "disabled_reason": e.disabled_reason,
            "failing_since": e.failing_since.isoformat() if e.failing_since else None}


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM/SIGINT: finish what is in flight, then stop."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


@click.group()
def portal() -> None:
    """B2B portal webhooks: endpoints, notices, the delivery process."""


@portal.group()
def endpoint() -> None:
    """Customers' webhook endpoints (audited)."""


@endpoint.command("add")
@click.option("--customer", required=True, help="The customer account the endpoint is for.")
@click.option("--child", "children", multiple=True,
              help="A child account whose events it also receives (repeatable).")
@click.option("--url", required=True, help="Where to POST (http or https).")
@click.option("--event", "events", multiple=True,
              help="An event type to receive (repeatable; default: all).")
@_ACTOR
@_REASON
@click.pass_context
@_errors
def add_cmd(ctx, customer, children, url, events, actor, reason) -> None:
    """Register an endpoint; prints its id and its first signing secret (once)."""
    from workers.portal.endpoints import EVENT_TYPES, EndpointRegistry

    registry = EndpointRegistry(_state(ctx))
    e, secret = registry.add(customer, url, actor=_actor(ctx, actor), reason=reason,
                             children=tuple(children), event_types=tuple(events) or EVENT_TYPES)
    click.echo(f"endpoint {e.id} for {e.customer_key} -> {e.url}")
    click.echo(f"signing secret (shown once; give it to the customer): {secret}")


@endpoint.command("list")
@click.option("--customer", help="Only this customer's endpoints.")
@_FORMAT
@click.pass_context
@_errors
def list_cmd(ctx, customer, fmt) -> None:
    """Every endpoint with its status (secrets are never listed)."""
    from workers.portal.endpoints import EndpointRegistry

    rows = [_row(e) for e in EndpointRegistry(_state(ctx)).list(customer)]
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="portal endpoints")
    for col in ("id", "customer", "customers", "url", "status", "events", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r["id"]), r["customer"], ",".join(r["customers"]), r["url"],
                      r["status"], str(len(r["event_types"])),
                      r["disabled_reason"] or (f"failing since {r['failing_since']}"
                                               if r["failing_since"] else ""))
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160).print(table)
    if not rows:
        click.echo("no endpoints")


_HELP = {"disable": "Stop deliveries; waiting messages go to the exception store.",
         "enable": "Deliver again (replay its dead letters with `coexist dlq replay`).",
         "rotate-secret": "A new signing secret; the old one signs 24 h more."}


def _change(verb: str):
    @endpoint.command(verb, help=_HELP[verb])
    @click.argument("endpoint_id", type=int)
    @_ACTOR
    @_REASON
    @click.pass_context
    @_errors
    def cmd(ctx, endpoint_id, actor, reason) -> None:
        from workers.portal.endpoints import EndpointRegistry

        state = _state(ctx)
        registry = EndpointRegistry(state)
        who = _actor(ctx, actor)
        if verb == "disable":
            from bus.exception_store import ExceptionStore
            from workers.portal.delivery import fail_waiting

            registry.disable(endpoint_id, actor=who, reason=reason)
            moved = fail_waiting(state, ExceptionStore(state), endpoint_id,
                                 f"endpoint {endpoint_id} disabled by {who}: {reason}")
            click.echo(f"endpoint {endpoint_id} disabled; {moved} waiting message(s) moved to "
                       "the exception store (replay them after `enable`)")
        elif verb == "enable":
            registry.enable(endpoint_id, actor=who, reason=reason)
            click.echo(f"endpoint {endpoint_id} enabled")
        else:
            secret = registry.rotate_secret(endpoint_id, actor=who, reason=reason)
            click.echo(f"new signing secret for endpoint {endpoint_id} (shown once): {secret}")
            click.echo("the previous secret keeps signing for 24 h beside the new one")

    return cmd


for _verb in ("disable", "enable", "rotate-secret"):
    _change(_verb)


@endpoint.command("history")
@click.argument("endpoint_id", type=int, required=False)
@_FORMAT
@click.pass_context
@_errors
def history_cmd(ctx, endpoint_id, fmt) -> None:
    """Audited changes (newest first): who, when, what, why."""
    from workers.portal.endpoints import EndpointRegistry

    rows = EndpointRegistry(_state(ctx)).history(endpoint_id)
    if fmt == "json":
        click.echo(json.dumps([{"endpoint_id": r.endpoint_id, "at": r.at.isoformat(),
                                "actor": r.actor, "action": r.action, "reason": r.reason,
                                "detail": r.detail} for r in rows], indent=2))
        return
    for r in rows:
        click.echo(f"{r.at.isoformat(timespec='seconds')}  endpoint {r.endpoint_id}  "
                   f"{r.action:<13} by {r.actor}: {r.reason} ({r.detail})")


@portal.command("notices")
@_FORMAT
@click.pass_context
@_errors
def notices_cmd(ctx, fmt) -> None:
    """Endpoints disabled or failing, with their failed deliveries; exit 1 if any."""
    from workers.portal.delivery import notices

    found = notices(_state(ctx))
    if fmt == "json":
        click.echo(json.dumps([dataclasses.asdict(n) for n in found], indent=2))
    else:
        for n in found:
            click.echo(f"endpoint {n.endpoint_id} ({n.customer_key}, {n.url}): {n.state}: "
                       f"{n.detail}; {n.failed_deliveries} failed deliveries")
        if not found:
            click.echo("no endpoint needs attention")
    if found:
        raise click.exceptions.Exit(1)


@portal.command("deliver")
@click.option("--threads", default=16, show_default=True, type=click.IntRange(min=1),
              help="Delivery threads.")
@click.option("--timeout-s", default=15.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="One attempt's whole HTTP exchange.")
@click.option("--lease-margin-s", default=15.0, show_default=True,
              type=click.FloatRange(0.5, 600),
              help="A claim outlives the attempt's timeout by this much; a killed "
                   "dispatcher's claims are taken by another this long after its timeout.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                                case_sensitive=False))
@click.pass_context
def deliver_cmd(ctx: click.Context, threads: int, timeout_s: float, lease_margin_s: float,
                log_level: str) -> None:
    """Deliver due webhooks (and replayed dead letters) until SIGTERM."""
    import dramatiq

    from bus.context import configure_logging
    from workers.bootstrap import App, start
    from workers.portal.delivery import REDELIVER_QUEUE
    from workers.portal.process import Delivery

    configure_logging(log_level)
    app = start(App(ctx.obj.settings, erps={}), register=False)
    delivery = Delivery(app, threads=threads, timeout_s=timeout_s,
                        lease_margin_s=lease_margin_s)
    worker = dramatiq.Worker(app.broker, worker_threads=2, queues={REDELIVER_QUEUE})
    worker.start()
    stop = stop_on_signals()
    delivery.start(stop)
    try:
        stop.wait()
    finally:
        delivery.close()
        worker.stop()
        app.close()
