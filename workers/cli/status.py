"""``coexist status``: the whole coexistence layer on one screen, for people and monitors."""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workers.config import Settings


class NeedsAttention(click.ClickException):
    """Something needs a person (exit 1); the reasons are printed with the status."""

    exit_code = 1


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
def status(max_backlog: int, max_outbox_lag_s: float, max_capture_lag: int, fmt: str) -> None:
    """Broker, per-domain mode and flag version, outbox backlog and lag, open exceptions
    by class, last reconciliation, and change-capture lag of both ERPs.

    Exit status, for monitoring scripts: 0 all is well; 1 something needs
    attention (open exceptions, outbox backlog or lag over the limits, outbox rows
    that keep failing, capture lag over the limit, a reconciliation whose drift is
    above its limit, a configured ERP that cannot be read), each reason printed;
    2 bad input or an unreachable state database.  The cloud ERP's capture lag is
    measured only when COEXIST_CLOUD_URL is set.
    """
    from workers.cli.trace import open_state_engine
    from workers.observe import Thresholds, collect_status

    settings = Settings.from_env()
    state = open_state_engine(settings)
    try:
        report = collect_status(settings, state, Thresholds(max_backlog, max_outbox_lag_s,
                                                            max_capture_lag))
    finally:
        state.dispose()
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), default=str))
    else:
        _print(report)
    if report.attention:
        raise NeedsAttention(f"{len(report.attention)} thing(s) need attention")


def _print(report) -> None:
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    b = report.broker
    console.print(f"[bold]broker[/]: {escape(b['kind'])} {escape(b['url'])} "
                  f"({escape(b['queue_type'])})",
                  highlight=False)
    table = Table(title="domains")
    for col in ("domain", "mode", "flag v", "backlog", "lag s", "open exceptions",
                "last reconciliation"):
        table.add_column(col, justify="right" if col in ("flag v", "backlog", "lag s")
                         else "left")
    for d in report.domains:
        mode = d["mode"] if d["rollout"] == "all" else (
            f"{d['mode']} {d['rollout']} (else {d['base_mode']})")
        exc = ", ".join(f"{k} {v}" for k, v in sorted(d["open_exceptions"].items())) or "0"
        run = d["last_reconciliation"]
        rec = "-" if run is None else (
            f"{run['status']} {run['drift_pct']}%" if run["drift_pct"] is not None
            else run["status"])
        table.add_row(d["domain"], mode, str(d["flag_version"]), str(d["backlog"]),
                      f"{d['lag_s']:.1f}", exc, rec)
    console.print(table)
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
