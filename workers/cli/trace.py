"""``coexist trace``: one timeline of what happened to one business object.

Exit codes: 0 a timeline was printed; 1 nothing was found for the target (the
domain's flag changes alone do not count); 2 bad input (unknown domain, malformed key
or id), no state database or an unreachable one.
"""

from __future__ import annotations

import json
import sys

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workers.cli.common import UserError


class NothingFound(click.ClickException):
    """No message, exception, flag change or ERP change names the target (exit 1)."""

    exit_code = 1


def _console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)


@click.command("trace")
@click.argument("target")
@click.option("--since", default=None, metavar="WHEN",
              help="Only what happened since: a duration back from now (30m, 2h, 7d) or an "
                   "ISO 8601 time.")
@click.option("--limit", default=200, show_default=True, type=click.IntRange(min=1),
              help="Most rows read from each source (newest first).")
@click.option("--cloud-scan", default=20_000, show_default=True, type=click.IntRange(min=1),
              help="Cloud change-feed entries scanned each side of the router's checkpoint "
                   "(the feed cannot be filtered by key).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_obj
def trace(app, target: str, since: str | None, limit: int, cloud_scan: int, fmt: str) -> None:
    """What happened to one business object, across every system, in time order.

    TARGET is a correlation id (every message and exception carrying it, the flag
    changes that routed them and the captured change that started it) or
    DOMAIN:KEY with the canonical key, e.g. customer:10042 or
    inventory:DAL1:WID-01000 (everything about that record: ERP changes from the
    legacy change log and, if COEXIST_CLOUD_URL is set, the cloud change feed;
    messages; exceptions; flag changes; reconciliation findings).

    Each message shows the flag version it was routed under and which audited
    flag change (who, when, why) that version was.  A source that cannot be read
    is named as unavailable; the rest is still shown.

    Exit status: 0 a timeline was shown; 1 nothing was found; 2 bad input (unknown
    domain, malformed key or id) or an unreachable state database.
    """
    from workers.console.data import trace_result
    from workers.observe import TraceInputError, parse_since, parse_target

    try:
        parsed = parse_target(target)
        since_at = parse_since(since)
    except (TraceInputError, ValueError) as exc:
        raise UserError(str(exc)) from None
    result = trace_result(app, parsed, since=since_at, limit=limit, cloud_scan=cloud_scan)
    if fmt == "json":
        click.echo(json.dumps(result.to_dict(), default=str))
    else:
        _print(result)
    # The domain's flag changes are context, not news about the object: a key nobody ever
    # touched shows them but is still "nothing found".
    if not any(e.source != "flag_audit" for e in result.events):
        raise NothingFound(f"nothing found for {parsed.describe()}")


def _print(result) -> None:
    console = _console()
    head = f"[bold]{escape(result.target.describe())}[/]"
    if result.target.correlation_id and result.domain:
        head += f" ({result.domain}:{result.key})"
    console.print(head, highlight=False)
    if result.route:
        r = result.route
        console.print(f"  route: pinned to {r['pinned_sor'] or '-'}; last routed version "
                      f"flag v{r['last_flag_version']} / source v{r['last_source_version']}",
                      highlight=False)
    if result.xref:
        console.print(escape(f"  xref: legacy {result.xref['legacy_key'] or '-'}, cloud "
                             f"{result.xref['cloud_id'] or '-'}"), highlight=False)
    table = Table(show_lines=False)
    for col in ("time (UTC)", "system", "what", "who", "flag", "message"):
        table.add_column(col, overflow="fold")
    for e in result.events:
        # Texts come from people and ERPs: never let rich read them as markup.
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], e.system, escape(e.what),
                      escape(e.who), escape(_flag(e)), (e.message_id or "")[:8])
    console.print(table)
    for note in result.sources:
        console.print(escape(f"  {note.name}: {note.state}" + (f" ({note.detail})"
                                                               if note.detail else "")),
                      highlight=False)


def _flag(e) -> str:
    if e.flag_version is None:
        return ""
    if e.flag is None or "change" not in e.flag:
        return f"v{e.flag_version}"
    who = f" by {e.flag['actor']}" if e.flag.get("actor") else ""
    return f"v{e.flag_version}: {e.flag['change']}{who}"
