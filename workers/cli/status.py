"""``coexist status``: the whole coexistence layer on one screen, for people and monitors."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workers.cli.common import NeedsAttention


@click.command("status")
@click.option("--max-backlog", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Unsent outbox rows (all domains) above which attention is needed.")
@click.option("--max-outbox-lag", "max_outbox_lag_s", default=60.0, show_default=True,
              type=click.FloatRange(min=0), help="Seconds the oldest unsent outbox row may "
                                                 "wait.")
@click.option("--max-capture-lag", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Changes an ERP's feed may hold that the router has not captured yet.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_obj
def status(app, max_backlog: int, max_outbox_lag_s: float, max_capture_lag: int,
           fmt: str) -> None:
    """The state database it read, the broker and its queues (ready / unacked /
    consumers), Redis, per-domain mode and flag version, outbox backlog and lag, messages
    routed to the ERP writers but not yet applied (by flag version), open
    exceptions by class, last reconciliation, change-capture lag of both ERPs, channel
    subscriptions with their backlog, EDI trading partners (997s overdue or rejected, files
    waiting in inbound/ or in failed/), the portal's endpoints, webhook backlog and notices
    (disabled or failing endpoints), and freeze windows.

    Exit status, for monitoring scripts: 0 all is well; 1 something needs
    attention (open exceptions, outbox backlog or lag over the limits, outbox rows
    that keep failing, capture lag over the limit, a reconciliation whose drift is
    above COEXIST_MAX_DRIFT_PCT, a configured ERP that cannot be read, the broker or
    Redis unreachable, a queue holding messages that no consumer takes, messages routed
    under an older flag version still not applied, a portal endpoint disabled or failing,
    due webhooks waiting longer than --max-outbox-lag), each reason
    printed; 2 bad configuration or no state database.  The cloud ERP's capture lag is
    measured only when COEXIST_CLOUD_URL is set.
    """
    from workers.observe import Thresholds, collect_status

    report = collect_status(app, Thresholds(max_backlog, max_outbox_lag_s, max_capture_lag))
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), default=str))
    else:
        _print(report)
    if report.attention:
        raise NeedsAttention(f"{len(report.attention)} thing(s) need attention")


def queue_table(broker, title: str = "queues") -> Table:
    """The broker's queues as a table (shared with ``cutover status``)."""
    table = Table(title=f"{title} ({broker.source})", title_justify="left")
    for col in ("queue", "ready", "unacked", "delayed", "dead", "consumers"):
        table.add_column(col, justify="left" if col == "queue" else "right")

    def n(value) -> str:
        return "?" if value is None else str(value)

    for q in broker.queues:
        if not q.declared:
            table.add_row(q.name, "-", "-", "-", "-", "not declared")
            continue
        style = "bold red" if q.held and q.consumers == 0 else None
        table.add_row(q.name, n(q.ready), n(q.unacked), n(q.delayed), n(q.dead),
                      n(q.consumers), style=style)
    return table


def print_broker(console: Console, broker) -> None:
    console.print(f"[bold]broker[/]: {escape(broker.kind)} {escape(broker.url)} "
                  f"({escape(broker.queue_type)})", highlight=False)
    if not broker.reachable:
        console.print(escape(f"  unreachable: {broker.error}"), highlight=False)
    else:
        console.print(queue_table(broker))
    for note in broker.notes:
        console.print(escape(f"  {note}"), highlight=False)


def _print(report) -> None:
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    console.print(f"[bold]state[/]: {escape(report.state)}", highlight=False)
    print_broker(console, report.broker)
    if report.redis is not None:
        r = report.redis
        console.print(escape(f"redis: {r['url']} " + (
            "answers" if r["reachable"] else f"UNREACHABLE ({r['error']})")), highlight=False)
    table = Table(title="domains")
    for col in ("domain", "mode", "flag v", "backlog", "lag s", "not yet applied",
                "open exceptions", "last reconciliation"):
        table.add_column(col, justify="right" if col in ("flag v", "backlog", "lag s")
                         else "left")
    for d in report.domains:
        mode = d["mode"] if d["rollout"] == "all" else (
            f"{d['mode']} {d['rollout']} (else {d['base_mode']})")
        exc = ", ".join(f"{k} {v}" for k, v in sorted(d["open_exceptions"].items())) or "0"
        run = d["last_reconciliation"]
        rec = "-" if run is None else (
            f"{run['status']} {run['drift_pct']:g}%" if run["drift_pct"] is not None
            else run["status"])
        u = d["unsettled"]
        pending = "0" if not u["total"] else (
            f"{u['total']} (" + ", ".join(f"v{v}: {n}" for v, n in u["by_flag_version"].items())
            + ")")
        table.add_row(d["domain"], mode, str(d["flag_version"]), str(d["backlog"]),
                      f"{d['lag_s']:.1f}", pending, exc, rec)
    console.print(table)
    console.print(f"drift limit: {report.max_drift_pct:g}% (COEXIST_MAX_DRIFT_PCT)",
                  highlight=False)
    o = report.outbox
    console.print(f"outbox: backlog {o['backlog']}, lag {o['lag_s']:.1f}s, "
                  f"{len(o['stuck'])} stuck", highlight=False)
    for c in report.capture:
        if c["lag"] is None:
            console.print(f"capture {c['system']}: checkpoint {c['checkpoint']}, feed "
                          f"{c['state']}", highlight=False)
        else:
            lag = f">= {c['lag']}" if c["lag_at_least"] else str(c["lag"])
            console.print(f"capture {c['system']}: checkpoint {c['checkpoint']}, feed at "
                          f"{c['last_cursor']}, {lag} change(s) behind", highlight=False)
    if report.subscriptions:
        for s in report.subscriptions:
            backlog = "?" if s["backlog"] is None else s["backlog"]
            consumers = "?" if s["consumers"] is None else s["consumers"]
            console.print(escape(f"subscription {s['name']}: {', '.join(s['domains'])} "
                                 f"({', '.join(s['kinds'])}) -> {s['queue']}: backlog "
                                 f"{backlog}, consumers {consumers}"), highlight=False)
            if "crm" in s:
                from workers.crm.status import describe

                console.print(escape(f"  {describe(s['crm'])}"), highlight=False)
    else:
        console.print("subscriptions: none configured (no channel receives events)",
                      highlight=False)
    for p in report.edi:
        oldest = "" if p["oldest_waiting_s"] is None else f" (oldest {p['oldest_waiting_s']:g} s)"
        console.print(escape(
            f"EDI partner {p['partner']}: {p['overdue']} unacknowledged past "
            f"{p['ack_window_minutes']} min, {p['rejected']} rejected, {p['errors']} accepted "
            f"with errors; inbound/ {p['inbound_waiting']} waiting{oldest}, "
            f"{p['inbound_claimed']} being answered; failed/ {p['failed_files']} file(s); "
            f"{p['outbound_pending']} outbound not written"), highlight=False)
    if report.portal is not None:
        _print_portal(console, report.portal)
    if report.freeze:
        for w in report.freeze:
            console.print(escape(f"freeze window {w['window']}: {w['state']}"),
                          highlight=False)
    else:
        console.print("freeze windows: none (COEXIST_FREEZE)", highlight=False)
    for note in report.sources:
        if note.state != "ok":
            console.print(escape(f"  {note.name}: {note.state} ({note.detail})"),
                          highlight=False)
    if report.attention:
        console.print("[bold red]needs attention:[/]")
        for reason in report.attention:
            console.print(escape(f"  - {reason}"), highlight=False)
    else:
        console.print("[green]all is well[/]")


def _print_portal(console: Console, portal) -> None:
    e, d = portal["endpoints"], portal["deliveries"]
    console.print(escape(
        f"portal webhooks: endpoints {e['active']} active, {e['disabled']} disabled, "
        f"{e['failing']} failing; deliveries {d['due']} due (oldest {d['oldest_due_s']:g}s), "
        f"{d['waiting_retry']} waiting to retry, {d['failed']} failed"), highlight=False)
    for n in portal["notices"]:
        console.print(escape(f"  endpoint {n['endpoint_id']} ({n['customer_key']}, {n['url']}):"
                             f" {n['state']}: {n['detail']}; {n['failed_deliveries']} failed "
                             "deliveries"), highlight=False)
