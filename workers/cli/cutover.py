"""``coexist cutover``: see, plan, change and roll back the per-domain cutover flags.

Exit codes: 0 done (also when the change is audited but Redis could not be told: a
warning says so); 1 refused (a check failed) or drain timed out; 2 bad input or an
unreachable system; 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from coexistence.canonical import DOMAINS
from coexistence.flags import (
    FULL,
    MODES,
    FlagError,
    FlagState,
    Rollout,
    check_domain,
    check_segment_values,
    parse_mode,
    parse_segments,
    percent_to_buckets,
)
from coexistence.preflight import TransitionPlan, backfill_command
from workers.cli.common import NeedsAttention, UserError

#: Default longest wait for in-flight work routed under the old flag version.
DRAIN_TIMEOUT_S = 120.0


class Refused(NeedsAttention):
    """A guard or rule refused the change (exit 1, the checks are printed above)."""


def _console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140)


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FlagError as exc:
            raise UserError(str(exc)) from None

    return wrapper


def _flags(app) -> dict[str, FlagState]:
    """The truth (the SQL audit), healing Redis on the way if it lags behind."""
    from workers.flags import RedisFlagStore

    store = app.flag_store
    if isinstance(store, RedisFlagStore):
        try:
            store.restore()
        except Exception as exc:  # noqa: BLE001 - Redis down must not hide the truth
            from workers.errors import first_line

            click.echo(f"warning: could not refresh Redis (COEXIST_REDIS_URL) from the audit: "
                       f"{first_line(exc)}", err=True)
    return app.cutover.flags()


def _rollout(percent: float | None, segments: tuple[str, ...]) -> Rollout:
    if percent is None and not segments:
        return FULL
    buckets = percent_to_buckets(100.0 if percent is None else percent)
    return Rollout(buckets, parse_segments(segments))


def _print_plan(console: Console, p: TransitionPlan, force: bool, impact=None,
                impact_error: str | None = None, waiting: bool = False) -> None:
    """The plan's checks; with ``waiting`` a failed backlog check is what the switch is
    about to wait for (WAIT), not a refusal."""
    console.print(f"[bold]{p.current.domain}[/]: {p.current.describe()} (v{p.current.version})"
                  f" -> {p.proposed.describe()} (v{p.proposed.version}) [{p.direction}]")
    if impact is not None:
        console.print(f"  records that would move: {impact.moving:,} of {impact.records:,}",
                      highlight=False)
    elif impact_error:
        console.print(f"  records that would move: unknown ({escape(impact_error)})",
                      highlight=False, soft_wrap=True)
    if not p.checks:
        console.print("  no checks apply (moving back is always allowed)")
    for c in p.checks:
        if c.ok:
            mark = "[green]PASS[/]"
        elif waiting and c.name == "backlog":
            mark = "[yellow]WAIT[/]"
        elif force and c.overridable:
            mark = "[yellow]FORCED[/]"
        else:
            mark = "[red]FAIL[/]"
        console.print(f"  {mark} {c.name}: {escape(c.detail)}", highlight=False,
                      soft_wrap=True)
    for w in p.warnings:
        console.print(f"  [yellow]WARN[/] {escape(w)}", highlight=False, soft_wrap=True)


def _impact(app, p: TransitionPlan, *, required: bool):
    """(impact, error): the records the change would move, read from the SoR.  With
    segments the read is required (their values are checked against the records)."""
    from workers.errors import SetupError, first_line
    from workers.flags.rollout import impact

    try:
        result = impact(app, p.current, p.proposed)
    except SetupError as exc:
        if required:
            raise
        return None, f"{exc.problem}{exc.where()}"
    except Exception as exc:  # noqa: BLE001 - the count is information, not a guard
        if required:
            raise
        return None, first_line(exc)
    check_segment_values(p.current.domain, p.proposed.rollout, result.segment_values)
    return result, None


@click.group()
def cutover() -> None:
    """Per-domain cutover flags: status, plan, set, rollback, history."""


@cutover.command()
@click.argument("domain", required=False, type=click.Choice(DOMAINS))
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
@_user_errors
def status(app, domain: str | None, fmt: str) -> None:
    """Every domain's (or DOMAIN's) mode, rollout, flag version, messages routed but not
    yet applied (by flag version), dead letters and last drift, and the broker's queues
    that carry its messages.  Exit 1 when something needs attention: a queue holding
    messages with no consumer, or messages routed under an older flag version still not
    applied."""
    from workers.observe.broker import read_broker
    from workers.observe.waits_text import waiting_attention

    rows = []
    attention = []
    for name, state in _flags(app).items():
        if domain is not None and name != domain:
            continue
        rec = app.facts.last_reconciliation(name)
        pending = app.cutover.pending(name)
        reader = getattr(app.facts, "repairs_waiting", None)
        waiting = reader(name) if reader is not None else None
        rows.append({
            "domain": name, "mode": state.mode.value, "base_mode": state.base_mode.value,
            "rollout": state.rollout.describe(), "version": state.version,
            "backlog": None if pending is None else pending.total,
            "unsettled": None if pending is None else {
                "total": pending.total, "unsent": pending.unsent,
                "in_broker": pending.in_broker,
                "by_flag_version": {str(v): n for v, n in sorted(pending.by_version.items())},
                "by_queue": dict(sorted(pending.by_queue.items()))},
            "dead_letters": app.facts.open_exceptions(name),
            "last_drift_pct": rec.drift_pct if rec else None,
            "last_reconciliation": None if rec is None else {
                "id": rec.run_id, "status": rec.status, "drift_pct": rec.drift_pct,
                "finished_at": rec.finished_at.isoformat()},
            "last_reconciled_at": rec.finished_at.isoformat() if rec else None,
            "repairs_waiting": waiting,
        })
        said = waiting_attention(name, waiting)
        if said:
            attention.append(said)
        older = app.cutover.pending(name, below_version=state.version)
        if older is not None and older.total:
            attention.append(f"{name}: {older.describe()} message(s) routed under flag "
                             f"version(s) older than {state.version} not yet applied "
                             f"[{older.queues()}]")
    broker = read_broker(app.settings, _queues_of(app, domain))
    attention = broker.attention() + attention
    if fmt == "json":
        click.echo(json.dumps({"store": app.flag_store.name, "domains": rows,
                               "broker": broker.to_dict(), "attention": attention}))
    else:
        _print_status(rows, broker, attention, app.flag_store.name)
    if attention:
        raise NeedsAttention(f"{len(attention)} thing(s) need attention")


def _print_status(rows: list[dict], broker, attention: list[str], store: str) -> None:
    table = Table(title=f"cutover flags ({store} store)")
    for col in ("domain", "mode", "rollout", "version", "not yet applied", "dead letters",
                "last drift"):
        table.add_column(col, justify="right" if col == "version" else "left")
    for r in rows:
        mode = r["mode"] if r["rollout"] == "all" else f"{r['mode']} (else {r['base_mode']})"
        drift = "missing" if r["last_drift_pct"] is None else f"{r['last_drift_pct']:g}%"
        u = r["unsettled"]
        if u is None:
            pending = "unknown"
        elif not u["total"]:
            pending = "0"
        else:
            versions = ", ".join(f"v{v}: {n}" for v, n in u["by_flag_version"].items())
            pending = (f"{u['total']} ({versions}; {u['in_broker']} in the broker, "
                       f"{u['unsent']} unsent)")
        table.add_row(r["domain"], mode, r["rollout"], str(r["version"]), pending,
                      _unknown(r["dead_letters"]), drift)
    console = _console()
    console.print(table)
    from workers.cli.status import print_broker

    print_broker(console, broker)
    for reason in attention:
        console.print(f"  [bold red]attention[/]: {escape(reason)}", highlight=False,
                      soft_wrap=True)


def _queues_of(app, domain: str | None) -> list[str]:
    """The queues that carry ``domain``'s messages (writers, commands, reports, the channels
    subscribed to it); all of them without a domain."""
    if domain is None:
        return app.queue_names()
    from workers.router import queues

    names = [*queues.WRITE_QUEUE.values(), queues.COMMAND_QUEUE, queues.REPORT_QUEUE]
    return names + [s.queue for s in app.subscriptions if domain in s.domains]


def _unknown(value: int | None) -> str:
    return "unknown" if value is None else str(value)


@cutover.command("plan")
@click.argument("domain")
@click.argument("mode")
@click.option("--percent", type=float, help="Sticky percentage of records to move (0-100).")
@click.option("--segment", "segments", multiple=True, metavar="NAME=VALUE",
              help="Move only records of this segment (warehouse, region, customer_group); "
                   "repeat for more values.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text")
@click.pass_obj
@_user_errors
def plan_cmd(app, domain: str, mode: str, percent: float | None, segments: tuple[str, ...],
             fmt: str) -> None:
    """What setting DOMAIN to MODE would change, how many records would move, and which
    checks pass or fail (exit 1 if any fail)."""
    _flags(app)
    rollout = _rollout(percent, segments)
    p = app.cutover.plan(check_domain(domain), parse_mode(mode), rollout)
    impact, impact_error = _impact(app, p, required=bool(rollout.segments))
    if fmt == "json":
        click.echo(json.dumps({
            "domain": domain, "from": p.current.to_dict(), "to": p.proposed.to_dict(),
            "direction": p.direction, "allowed": p.allowed(), "warnings": list(p.warnings),
            "records": None if impact is None else impact.records,
            "moving": None if impact is None else impact.moving,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail,
                        "overridable": c.overridable} for c in p.checks],
        }))
    else:
        _print_plan(_console(), p, force=False, impact=impact, impact_error=impact_error)
    if p.failed:
        raise Refused(f"{len(p.failed)} check(s) fail; `set` would refuse without --force")


def _apply(app, p: TransitionPlan, *, action: str, reason: str, force: bool,
           actor: str | None, wait: bool, wait_timeout_s: float,
           replan: Callable[[int], TransitionPlan], impact=None) -> None:
    """The switch protocol (``workers.flags.ops``): wait for capture, drain what is routed
    so far, check again, commit, drain what older versions still route."""
    from workers.flags import FlagNotPublished
    from workers.flags.ops import DrainTimeout, TransitionRefused, outstanding

    console = _console()
    who = app.actor(actor)
    if not reason.strip():
        raise UserError("--reason must not be empty")
    domain = p.current.domain
    skipped = None
    blocking = [c for c in p.blocking(force) if not (wait and c.name == "backlog")]
    _print_plan(console, p, force, impact=impact, waiting=wait and not blocking)
    if not wait:
        left = app.cutover.pending(domain)
        skipped = ("unknown what was in flight" if left is None else
                   "nothing was in flight" if left.total == 0 else
                   outstanding(domain, left, p.current.version))
    elif not blocking:
        _wait_for_capture(app, wait_timeout_s)
        console.print("changes logged before this switch: all routed under the old flag")
        try:
            first = app.cutover.drain_before(domain, wait_timeout_s,
                                             progress=lambda line: _say(console, line))
        except DrainTimeout as exc:
            raise Refused(str(exc)) from None
        if first.total:
            console.print(f"{domain}: the {first.total} message(s) routed under flag version "
                          f"<= {p.current.version} before this switch: applied, refused or "
                          "recorded", highlight=False)
        else:
            console.print(f"{domain}: no message routed under flag version <= "
                          f"{p.current.version} was waiting", highlight=False)
        again = replan(first.newest_id)
        if again.current.version != p.current.version:
            raise Refused(f"{domain} changed meanwhile (now version {again.current.version}); "
                          f"look at `coexist cutover history {domain}` and plan again")
        if [c.ok for c in again.checks] != [c.ok for c in p.checks]:
            console.print("checks again after the wait:")
            _print_plan(console, again, force, impact=impact)
        p = again
    try:
        after = app.cutover.apply(p, actor=who, reason=reason, force=force, action=action,
                                  skipped_wait=skipped)
    except TransitionRefused as exc:
        raise Refused(str(exc)) from None
    except FlagNotPublished as exc:
        # Audited, so it is the truth; processes pick it up when Redis is back (their
        # watchers re-publish it from the audit).  A script must not retry it: exit 0.
        after = app.cutover.flags()[domain]
        console.print(f"{after.domain} is now {after.describe()} at flag version "
                      f"{after.version} (audited)", highlight=False)
        click.echo(f"warning: {exc}; not waiting for the drain", err=True)
        return
    console.print(f"{after.domain} is now {after.describe()} at flag version {after.version}"
                  + (" [yellow](forced)[/]" if p.failed or skipped else ""), highlight=False)
    if skipped:
        console.print(f"not waiting (--no-wait, audited): {escape(skipped)}", highlight=False,
                      soft_wrap=True)
        return
    try:
        app.cutover.wait_for_drain(after, wait_timeout_s,
                                   progress=lambda line: _say(console, line))
    except DrainTimeout as exc:
        raise Refused(str(exc)) from None
    console.print(f"in-flight {after.domain} work under older flag versions: drained")


def _say(console: Console, line: str) -> None:
    console.print(escape(line), highlight=False, soft_wrap=True)


def _wait_for_capture(app, timeout_s: float) -> None:
    """Before the switch: the router must have routed every change the ERPs logged so far,
    or those changes would be judged under the new flag (see ``workers.router.lag``)."""
    from workers.router.lag import CaptureBehind, wait_for_capture

    with app.feeds() as feeds:
        try:
            wait_for_capture(app.state, feeds, timeout_s)
        except CaptureBehind as exc:
            raise Refused(str(exc)) from None


_reason = click.option("--reason", required=True, help="Why (mandatory, audited).")
_actor = click.option("--actor", help="Who (default: COEXIST_ACTOR, else USER).")
_no_wait = click.option("--no-wait", is_flag=True,
                        help="Do not wait, before the switch, for the router to route every "
                             "change already logged and for the workers to apply every "
                             "message routed so far, nor, after it, for work routed under "
                             "the old version to drain (audited in the flag history).")
_wait_timeout = click.option("--wait-timeout", type=click.FloatRange(min=0),
                             default=DRAIN_TIMEOUT_S, show_default=True,
                             help="Longest time each wait (capture, the drain before the "
                                  "switch, the drain after it) may take, in seconds; before "
                                  "the switch a timeout changes nothing.")


@cutover.command("set")
@click.argument("domain")
@click.argument("mode", type=click.Choice([m.value for m in MODES]))
@click.option("--percent", type=float, help="Sticky percentage of records to move (0-100).")
@click.option("--segment", "segments", multiple=True, metavar="NAME=VALUE",
              help="Move only records of this segment; repeat for more values (checked "
                   "against the values the domain's records carry).")
@_reason
@click.option("--force", is_flag=True, help="Override failed guards (audited as forced).")
@_actor
@_no_wait
@_wait_timeout
@click.pass_obj
@_user_errors
def set_cmd(app, domain: str, mode: str, percent: float | None, segments: tuple[str, ...],
            reason: str, force: bool, actor: str | None, no_wait: bool,
            wait_timeout: float) -> None:
    """Set DOMAIN to MODE (optionally for a rollout), if the guards allow it."""
    _flags(app)
    rollout = _rollout(percent, segments)
    p = app.cutover.plan(check_domain(domain), parse_mode(mode), rollout)
    impact = None
    if rollout.segments:
        impact, _ = _impact(app, p, required=True)
    _apply(app, p, action="set", reason=reason, force=force, actor=actor, wait=not no_wait,
           wait_timeout_s=wait_timeout, impact=impact,
           replan=lambda drained_to: app.cutover.plan(p.current.domain, p.proposed.mode,
                                                      rollout, drained_to=drained_to))


@cutover.command()
@click.argument("domain")
@_reason
@click.option("--force", is_flag=True,
              help="Roll back out of cloud_only without a verified backfill (audited).")
@_actor
@_no_wait
@_wait_timeout
@click.pass_obj
@_user_errors
def rollback(app, domain: str, reason: str, force: bool, actor: str | None, no_wait: bool,
             wait_timeout: float) -> None:
    """Move DOMAIN one step back (undo a partial rollout, else the previous mode)."""
    _flags(app)
    p = app.cutover.plan_rollback(check_domain(domain))
    backfill = next((c for c in p.checks if c.name == "backfill" and not c.ok), None)
    if backfill is not None and not force:
        _print_plan(_console(), p, force)
        raise Refused(
            f"{domain} is cloud_only: the legacy ERP missed every change since; backfill it "
            f"first with `{backfill_command(domain)}`, then roll back (or --force to roll back "
            "anyway)"
        )
    _apply(app, p, action="rollback", reason=reason, force=force, actor=actor,
           wait=not no_wait, wait_timeout_s=wait_timeout,
           replan=lambda drained_to: app.cutover.plan_rollback(p.current.domain,
                                                               drained_to=drained_to))


@cutover.command()
@click.argument("domain", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
@_user_errors
def history(app, domain: str | None, limit: int, fmt: str) -> None:
    """Audited flag changes, newest first (all domains, or DOMAIN)."""
    if domain is not None:
        check_domain(domain)
    entries = app.flag_store.history(domain, limit)
    if fmt == "json":
        click.echo(json.dumps([{
            "id": e.id, "domain": e.domain, "version": e.version, "at": e.at.isoformat(),
            "actor": e.actor, "reason": e.reason, "action": e.action, "forced": e.forced,
            "overridden": list(e.overridden), "from": e.before.to_dict(),
            "to": e.after.to_dict(),
        } for e in entries]))
        return
    table = Table(title="cutover history" + (f" ({domain})" if domain else ""))
    for col in ("at", "domain", "version", "from", "to", "actor", "forced", "reason"):
        table.add_column(col)
    for e in entries:
        table.add_row(e.at.strftime("%Y-%m-%d %H:%M:%S"), e.domain, str(e.version),
                      e.before.describe(), e.after.describe(), e.actor,
                      "FORCED" if e.forced else "", e.reason)
    _console().print(table)
    if not entries:
        click.echo("no flag changes yet: every domain is in legacy at version 0")


__all__ = ["cutover"]
