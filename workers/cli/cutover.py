"""``coexist cutover``: see, plan, change and roll back the per-domain cutover flags.

Exit codes: 0 done; 1 refused (a check failed) or drain timed out; 2 bad input.
"""

from __future__ import annotations

import functools
import json
import sys

import click
from rich.console import Console
from rich.table import Table

from bus.errors import BusError
from coexistence.flags import (
    FULL,
    MODES,
    FlagError,
    FlagState,
    Rollout,
    check_domain,
    parse_mode,
    parse_segments,
    percent_to_buckets,
)
from coexistence.preflight import TransitionPlan, backfill_command
from workers.cli.common import UserError
from workers.config import Settings

#: Default longest wait for in-flight work routed under the old flag version.
DRAIN_TIMEOUT_S = 120.0


class Refused(click.ClickException):
    """A guard or rule refused the change (exit 1, the checks are printed above)."""

    exit_code = 1


def _console() -> Console:
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 140)


def _user_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FlagError, BusError) as exc:
            raise UserError(str(exc)) from None

    return wrapper


class _Env:
    """What every subcommand needs: settings, state database, store, guard facts."""

    def __init__(self) -> None:
        from workers.flags import SqlPreflightFacts, open_state, policy_from_env, store_for
        from workers.flags.ops import Cutover

        self.settings = Settings.from_env()
        policy = policy_from_env()
        try:
            self.engine = open_state(self.settings)
        except Exception as exc:  # noqa: BLE001 - one line for the user, not a traceback
            raise UserError(
                f"cannot open the state database: {type(exc).__name__}: {exc}"
            ) from None
        self.store = store_for(self.settings, self.engine)
        self.facts = SqlPreflightFacts(self.engine)
        self.cutover = Cutover(self.store, self.facts, policy)

    def flags(self) -> dict[str, FlagState]:
        """The truth (the SQL audit), healing Redis on the way if it lags behind."""
        restore = getattr(self.store, "restore", None)
        if restore is not None:
            try:
                restore()
            except Exception as exc:  # noqa: BLE001 - Redis down must not hide the truth
                click.echo(f"warning: could not refresh Redis from the audit: {exc}", err=True)
        return self.cutover.flags()


def _rollout(percent: float | None, segments: tuple[str, ...]) -> Rollout:
    if percent is None and not segments:
        return FULL
    buckets = percent_to_buckets(100.0 if percent is None else percent)
    return Rollout(buckets, parse_segments(segments))


def _print_plan(console: Console, p: TransitionPlan, force: bool) -> None:
    console.print(f"[bold]{p.current.domain}[/]: {p.current.describe()} (v{p.current.version})"
                  f" -> {p.proposed.describe()} (v{p.proposed.version}) [{p.direction}]")
    if not p.checks:
        console.print("  no checks apply (moving back is always allowed)")
    for c in p.checks:
        if c.ok:
            mark = "[green]PASS[/]"
        elif force and c.overridable:
            mark = "[yellow]FORCED[/]"
        else:
            mark = "[red]FAIL[/]"
        console.print(f"  {mark} {c.name}: {c.detail}", highlight=False)
    for w in p.warnings:
        console.print(f"  [yellow]WARN[/] {w}", highlight=False)


@click.group()
def cutover() -> None:
    """Per-domain cutover flags: status, plan, set, rollback, history."""


@cutover.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@_user_errors
def status(fmt: str) -> None:
    """Every domain's mode, rollout, flag version, backlog, dead letters and last drift."""
    env = _Env()
    rows = []
    for domain, state in env.flags().items():
        rec = env.facts.last_reconciliation(domain)
        rows.append({
            "domain": domain, "mode": state.mode.value, "base_mode": state.base_mode.value,
            "rollout": state.rollout.describe(), "version": state.version,
            "backlog": env.facts.backlog(domain),
            "dead_letters": env.facts.open_exceptions(domain),
            "last_drift_pct": rec.drift_pct if rec else None,
            "last_reconciled_at": rec.finished_at.isoformat() if rec else None,
        })
    if fmt == "json":
        click.echo(json.dumps({"store": env.store.name, "domains": rows}))
        return
    table = Table(title=f"cutover flags ({env.store.name} store)")
    for col in ("domain", "mode", "rollout", "version", "backlog", "dead letters", "last drift"):
        table.add_column(col, justify="right" if col in ("version", "backlog") else "left")
    for r in rows:
        mode = r["mode"] if r["rollout"] == "all" else f"{r['mode']} (else {r['base_mode']})"
        drift = "missing" if r["last_drift_pct"] is None else f"{r['last_drift_pct']:g}%"
        table.add_row(r["domain"], mode, r["rollout"], str(r["version"]),
                      _unknown(r["backlog"]), _unknown(r["dead_letters"]), drift)
    _console().print(table)


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
@_user_errors
def plan_cmd(domain: str, mode: str, percent: float | None, segments: tuple[str, ...],
             fmt: str) -> None:
    """What setting DOMAIN to MODE would change and which checks pass or fail (exit 1 if any
    fail)."""
    env = _Env()
    env.flags()
    p = env.cutover.plan(check_domain(domain), parse_mode(mode), _rollout(percent, segments))
    if fmt == "json":
        click.echo(json.dumps({
            "domain": domain, "from": p.current.to_dict(), "to": p.proposed.to_dict(),
            "direction": p.direction, "allowed": p.allowed(), "warnings": list(p.warnings),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail,
                        "overridable": c.overridable} for c in p.checks],
        }))
    else:
        _print_plan(_console(), p, force=False)
    if p.failed:
        raise Refused(f"{len(p.failed)} check(s) fail; `set` would refuse without --force")


def _apply(env: _Env, p: TransitionPlan, *, action: str, reason: str, force: bool,
           actor: str | None, wait: bool, wait_timeout_s: float) -> None:
    from workers.flags import actor_from_env
    from workers.flags.ops import DrainTimeout, TransitionRefused

    console = _console()
    who = actor_from_env(actor)
    if not reason.strip():
        raise UserError("--reason must not be empty")
    _print_plan(console, p, force)
    if wait and p.allowed(force):
        _wait_for_capture(env, wait_timeout_s)
        console.print("changes logged before this switch: all routed under the old flag")
    try:
        after = env.cutover.apply(p, actor=who, reason=reason, force=force, action=action)
    except TransitionRefused as exc:
        raise Refused(str(exc)) from None
    console.print(f"{after.domain} is now {after.describe()} at flag version {after.version}"
                  + (" [yellow](forced)[/]" if p.failed else ""), highlight=False)
    if wait:
        try:
            env.cutover.wait_for_drain(after, wait_timeout_s)
        except DrainTimeout as exc:
            raise Refused(str(exc)) from None
        console.print(f"in-flight {after.domain} work under older flag versions: drained")


def _wait_for_capture(env: _Env, timeout_s: float) -> None:
    """Before the switch: the router must have routed every change the ERPs logged so far,
    or those changes would be judged under the new flag (see ``workers.router.lag``)."""
    from workers.bootstrap import open_feeds
    from workers.router.lag import CaptureBehind, wait_for_capture

    try:
        feeds = open_feeds(env.settings)
    except Exception as exc:  # noqa: BLE001 - one line for the user
        raise UserError(f"cannot read the change feeds: {type(exc).__name__}: {exc}") from None
    try:
        wait_for_capture(env.engine, feeds, timeout_s)
    except CaptureBehind as exc:
        raise Refused(str(exc)) from None
    finally:
        for feed in feeds.values():
            close = getattr(feed, "close", None)
            if close is not None:
                close()


_reason = click.option("--reason", required=True, help="Why (mandatory, audited).")
_actor = click.option("--actor", help="Who (default: COEXIST_ACTOR, else USER).")
_no_wait = click.option("--no-wait", is_flag=True,
                        help="Do not wait, before the switch, for the router to route every "
                             "change already logged, nor, after it, for in-flight work under "
                             "the old version to drain.")
_wait_timeout = click.option("--wait-timeout", type=click.FloatRange(min=0),
                             default=DRAIN_TIMEOUT_S, show_default=True,
                             help="Longest wait for the drain, in seconds.")


@cutover.command("set")
@click.argument("domain")
@click.argument("mode", type=click.Choice([m.value for m in MODES]))
@click.option("--percent", type=float, help="Sticky percentage of records to move (0-100).")
@click.option("--segment", "segments", multiple=True, metavar="NAME=VALUE",
              help="Move only records of this segment; repeat for more values.")
@_reason
@click.option("--force", is_flag=True, help="Override failed guards (audited as forced).")
@_actor
@_no_wait
@_wait_timeout
@_user_errors
def set_cmd(domain: str, mode: str, percent: float | None, segments: tuple[str, ...],
            reason: str, force: bool, actor: str | None, no_wait: bool,
            wait_timeout: float) -> None:
    """Set DOMAIN to MODE (optionally for a rollout), if the guards allow it."""
    env = _Env()
    env.flags()
    p = env.cutover.plan(check_domain(domain), parse_mode(mode), _rollout(percent, segments))
    _apply(env, p, action="set",
           reason=reason, force=force, actor=actor, wait=not no_wait,
           wait_timeout_s=wait_timeout)


@cutover.command()
@click.argument("domain")
@_reason
@click.option("--force", is_flag=True,
              help="Roll back out of cloud_only without a verified backfill (audited).")
@_actor
@_no_wait
@_wait_timeout
@_user_errors
def rollback(domain: str, reason: str, force: bool, actor: str | None, no_wait: bool,
             wait_timeout: float) -> None:
    """Move DOMAIN one step back (undo a partial rollout, else the previous mode)."""
    env = _Env()
    env.flags()
    p = env.cutover.plan_rollback(check_domain(domain))
    backfill = next((c for c in p.checks if c.name == "backfill" and not c.ok), None)
    if backfill is not None and not force:
        _print_plan(_console(), p, force)
        built = "reconcile" in click.get_current_context().find_root().command.commands
        raise Refused(
            f"{domain} is cloud_only: the legacy ERP missed every change since; backfill it "
            f"first with `{backfill_command(domain)}`"
            + ("" if built else " (not built in this installation yet)")
            + ", then roll back (or --force to roll back anyway)"
        )
    _apply(env, p, action="rollback", reason=reason, force=force, actor=actor,
           wait=not no_wait, wait_timeout_s=wait_timeout)


@cutover.command()
@click.argument("domain", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@_user_errors
def history(domain: str | None, limit: int, fmt: str) -> None:
    """Audited flag changes, newest first (all domains, or DOMAIN)."""
    if domain is not None:
        check_domain(domain)
    env = _Env()
    entries = env.store.history(domain, limit)
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


__all__ = ["cutover"]
