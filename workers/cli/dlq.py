"""``coexist dlq``: list, inspect, replay and archive failed messages.

Failed messages (business errors, exhausted retries, dead letters drained from
RabbitMQ, undecodable input) live in the exception store, in the state
database (``COEXIST_STATE_URL``).  Replay goes through the configured broker
(``COEXIST_BROKER_URL``, else the embedded one under ``COEXIST_HOME``).

Exit codes: 0 done; 1 some selected records were not replayed or archived (each
named); 2 bad input, no state database or an unreachable system.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from bus.exception_store import STATUSES, ReplayResult
from coexistence.canonical import DOMAINS
from workers.cli.common import UserError
from workers.observe.exceptions import group_dicts, iso, record_detail, record_summary

#: Characters of an error message shown in a list row.
LIST_ERROR_CHARS = 80

_FORMAT = click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
                       show_default=True, help="Output as a table or as JSON.")


class PartlyFailed(click.ClickException):
    """Some selected records were not replayed or archived (exit 1; each is named above)."""

    exit_code = 1


def _console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as exc:
            raise UserError(str(exc)) from None

    return wrapper


def _enqueue_with_configured_broker(app) -> Callable[[dict], Any]:
    """``enqueue(message dict)`` publishing one message at a time with broker confirms,
    through the app's broker (opened only for a real replay, so listing and archiving
    work without any broker)."""
    import dramatiq

    from bus.publish import make_publisher
    from coexistence.ports import Closeable

    publish = make_publisher(app.broker)
    fields = ("queue_name", "actor_name", "args", "kwargs", "options", "message_id",
              "message_timestamp")

    def enqueue(message: dict) -> None:
        msg = dramatiq.Message(**{k: message[k] for k in fields if k in message})
        publish([msg])

    enqueue.close = publish.close if isinstance(publish, Closeable) else None  # type: ignore[attr-defined]
    return enqueue


_REASON = click.option("--reason", required=True, help="Why (mandatory, audited).")
_ACTOR = click.option("--actor", help="Who (default: COEXIST_ACTOR, else USER).")


@click.group()
def dlq() -> None:
    """Failed messages: list, show, replay and archive them."""


@dlq.command("list")
@click.option("--group", "grouped", is_flag=True,
              help="Count records per group (error type, call site) instead of listing them.")
@click.option("--domain", type=click.Choice(DOMAINS),
              help="Only this business domain.")
@click.option("--status", type=click.Choice([*STATUSES, "all"]), default="open",
              show_default=True, help="Records in this status.")
@click.option("--in-group", "group", metavar="G", help="Only records of group G.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Most records listed (newest failure first).")
@_FORMAT
@click.pass_obj
@_user_errors
def list_cmd(app, grouped: bool, domain: str | None, status: str, group: str | None,
             limit: int, fmt: str) -> None:
    """List failed messages, newest first, or their groups with --group.

    A group is one (error type, call site): usually one bug, fixed once and
    replayed with ``coexist dlq replay --group G``.
    """
    store = app.exceptions
    wanted = None if status == "all" else status
    if grouped:
        groups = store.groups(status=wanted, domain=domain)
        if fmt == "json":
            click.echo(json.dumps(group_dicts(groups), indent=2))
            return
        table = Table(title=f"exception groups ({status})")
        for col in ("group", "count", "error type", "call site", "classes", "domains",
                    "first failure", "last failure"):
            table.add_column(col, justify="right" if col == "count" else "left")
        for g in groups:
            table.add_row(g.group, str(g.count), g.error_type, g.call_site,
                          ",".join(g.failure_classes), ",".join(g.domains) or "-",
                          iso(g.first_failed_at) or "-", iso(g.last_failed_at))
        _console().print(table)
        if not groups:
            click.echo(f"no {status} exception records")
        return
    records = store.list(status=wanted, domain=domain, group=group, limit=limit)
    if fmt == "json":
        click.echo(json.dumps([record_summary(r) for r in records], indent=2))
        return
    table = Table(title=f"exception records ({status})")
    for col in ("id", "class", "domain", "key", "actor", "error", "attempts", "last failure",
                "group", "status"):
        table.add_column(col, justify="right" if col in ("id", "attempts") else "left")
    for r in records:
        table.add_row(str(r.id), r.failure_class, r.domain or "-", r.key or "-", r.actor_name,
                      _short(f"{r.error_type}: {r.error_message}"), str(r.attempts),
                      iso(r.last_failed_at), r.group_key, r.status)
    _console().print(table)
    if not records:
        click.echo(f"no {status} exception records")


@dlq.command("show")
@click.argument("record_id", type=int, metavar="ID")
@_FORMAT
@click.pass_obj
@_user_errors
def show_cmd(app, record_id: int, fmt: str) -> None:
    """Everything recorded about one failed message: error, envelope, raw bytes, message,
    and who archived or replayed it, when and why."""
    store = app.exceptions
    rec = store.get(record_id)
    if rec is None:
        raise UserError(f"no exception record {record_id} (see `coexist dlq list --status all`)")
    detail = record_detail(rec, store.actions(record_id))
    if fmt == "json":
        click.echo(json.dumps(detail, indent=2, default=str))
        return
    table = Table(title=f"exception record {rec.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in detail.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, indent=2, default=str)
        table.add_row(name, "-" if value is None else str(value))
    _console().print(table)


@dlq.command("replay")
@click.argument("record_ids", type=int, nargs=-1, metavar="[ID]...")
@click.option("--group", metavar="G", help="Replay every open record of group G.")
@_REASON
@_ACTOR
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
@_FORMAT
@click.pass_obj
@_user_errors
def replay_cmd(app, record_ids: tuple[int, ...], group: str | None, reason: str,
               actor: str | None, dry_run: bool, fmt: str) -> None:
    """Send failed messages again through the normal path, retry counters reset.

    Give record IDs or --group G.  Each message is enqueued (with broker
    confirms) before its record is marked replayed; replaying one twice is
    harmless because consumers skip messages they already applied.  Archived
    records are never replayed.  Who and why are audited (see `dlq show`).

    Exit status: 0 every selected record was replayed; 1 some were not (unknown
    IDs, archived records, records without a message, enqueue failures), each named.
    """
    _require_selection(record_ids, group)
    store = app.exceptions
    who = app.actor(actor)
    ids = list(record_ids) if record_ids else None
    if dry_run:
        result = store.replay(ids, group, enqueue=_never, actor=who, reason=reason,
                              dry_run=True)
    else:
        enqueue = _enqueue_with_configured_broker(app)
        try:
            result = store.replay(ids, group, enqueue=enqueue, actor=who, reason=reason)
        finally:
            if enqueue.close is not None:
                enqueue.close()
    _report(result, "replay", fmt)
    if group and not (result.replayed or result.failed or result.skipped):
        raise PartlyFailed(f"group {group} has no open records")
    if result.failed or result.skipped:
        raise PartlyFailed(f"{len(result.failed) + len(result.skipped)} record(s) were not "
                           "replayed")


@dlq.command("archive")
@click.argument("record_ids", type=int, nargs=-1, metavar="[ID]...")
@click.option("--group", metavar="G", help="Archive every open record of group G.")
@_REASON
@_ACTOR
@click.pass_obj
@_user_errors
def archive_cmd(app, record_ids: tuple[int, ...], group: str | None, reason: str,
                actor: str | None) -> None:
    """Mark open records as handled by hand: they leave the open list and are never
    replayed.  Who and why are audited (see `dlq show`).

    Exit status: 0 every selected record was archived; 1 some ID is unknown or not open.
    """
    _require_selection(record_ids, group)
    store = app.exceptions
    who = app.actor(actor)
    ids = list(record_ids) if record_ids else None
    missing: list[int] = []
    if ids is not None:
        found = {r.id: r.status for r in store.list(status=None, ids=ids, limit=None)}
        missing = [i for i in ids if found.get(i) != "open"]
        for i in missing:
            click.echo(f"not archived {i}: " + ("no such record" if i not in found
                                                else f"it is {found[i]}, not open"), err=True)
    n = store.archive(ids, group, actor=who, reason=reason)
    what = f"group {group}" if group else "ID " + ", ".join(map(str, record_ids))
    click.echo(f"archived {n} open record(s) ({what})")
    if missing:
        raise PartlyFailed(f"{len(missing)} record(s) not archived")
    if group and n == 0:
        raise PartlyFailed(f"group {group} has no open records")


def _never(message: dict) -> None:  # pragma: no cover - a dry run never enqueues
    raise AssertionError("dry run must not enqueue")


def _require_selection(record_ids: tuple[int, ...], group: str | None) -> None:
    if bool(record_ids) == bool(group):
        raise UserError("give record IDs or --group G (not both); see `coexist dlq list`")


def _report(result: ReplayResult, verb: str, fmt: str) -> None:
    if fmt == "json":
        click.echo(json.dumps({
            "dry_run": result.dry_run, "replayed": result.replayed,
            "skipped": [{"id": i, "reason": r} for i, r in result.skipped],
            "failed": [{"id": i, "error": e} for i, e in result.failed]}, indent=2))
        return
    done = "would replay" if result.dry_run else "replayed"
    click.echo(f"{done} {len(result.replayed)} record(s)"
               + (f": {', '.join(map(str, result.replayed))}" if result.replayed else ""))
    for rid, reason in result.skipped:
        click.echo(f"skipped {rid}: {reason}")
    for rid, error in result.failed:
        click.echo(f"failed {rid}: {error}", err=True)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LIST_ERROR_CHARS else text[: LIST_ERROR_CHARS - 3] + "..."
