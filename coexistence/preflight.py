"""Transition rules and guards for cutover flags (pure: the facts are given).

``propose`` turns a request (domain, mode, rollout) into the next ``FlagState``;
``rollback_target`` gives the one-step-back state; ``plan`` checks a proposed
change against the rules and the guard facts and says which checks pass or fail.

Rules:

* a move that puts any record in a more advanced mode is **forward** and must
  pass every guard: a last reconciliation that measured the drift, started after
  the domain's last routed change or finished within ``max_reconcile_age_s``,
  with drift within threshold; no open exceptions; no routed message of the
  domain left unapplied (in the outbox or the broker); upstream domains fully at
  least as far; no freeze window active;
* moves are one step at a time (legacy -> shadow -> cloud -> cloud_only and
  back); a jump needs ``force``;
* moving records out of ``cloud_only`` needs the legacy ERP backfilled first
  (the legacy ERP was not written in ``cloud_only``): the backfill check passes
  when a reconciliation finished after the switch to ``cloud_only``, started
  after the domain's last routed change, with drift within threshold;
* a domain mid-rollout can only widen/narrow that rollout, complete it or go
  back to its base mode (never a three-mode mix); this rule cannot be forced.

Every failed guard can be overridden with ``force`` and a reason; the store
records the change as forced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from coexistence.canonical import UPSTREAM
from coexistence.flags import FULL, MODES, FlagError, FlagState, Mode, Rollout

#: Default for the largest acceptable drift of the last reconciliation, in percent of records.
DEFAULT_MAX_DRIFT_PCT = 0.1
#: Default largest backlog (routed messages of the domain not yet applied) for a forward move.
DEFAULT_MAX_BACKLOG = 0
#: Default age in seconds within which a reconciliation counts even though the router
#: routed a change of the domain after it started (15 min).
DEFAULT_MAX_RECONCILE_AGE_S = 900.0
#: Statuses of a reconciliation run that measured the drift (``reconcile_run.status``).
MEASURED = ("ok", "drift")


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The last finished reconciliation run of a domain (``drift_pct`` is None for a run
    that failed, timed out or was interrupted: it measured nothing)."""

    drift_pct: float | None
    finished_at: datetime
    run_id: str | None = None
    started_at: datetime | None = None
    status: str = "ok"

    @property
    def measured(self) -> bool:
        return self.drift_pct is not None and self.status in MEASURED

    def name(self) -> str:
        """``run 3f2a... finished 2026-12-01T12:00:00+00:00``."""
        run = f"run {self.run_id} " if self.run_id else ""
        return f"{run}finished {self.finished_at.isoformat()}"


@dataclass(frozen=True)
class Pending:
    """Routed messages of a domain not yet applied, refused or recorded by a consumer
    (the settle ledger): where they are, under which flag versions, on which queues."""

    unsent: int = 0
    in_broker: int = 0
    by_version: Mapping[int, int] = field(default_factory=dict)
    by_queue: Mapping[str, int] = field(default_factory=dict)
    #: The newest outbox id among them: what a switch that waits for "everything routed
    #: so far" waits for.
    newest_id: int = 0
    #: Which messages were counted, for the guard's text (" before the wait": those routed
    #: before a switch started waiting; newer ones are waited for after it).
    scope: str = ""
    #: Repairs waiting for the SoR (``repair_wait``) that have no ledger row (a writer's
    #: re-send to the shadows): in flight too, though the ledger cannot see them.
    waiting_repairs: int = 0

    @property
    def total(self) -> int:
        return self.unsent + self.in_broker + self.waiting_repairs

    def describe(self) -> str:
        """``20 (12 in the broker, 8 unsent)``."""
        waiting = (f", {self.waiting_repairs} repair(s) waiting for the SoR"
                   if self.waiting_repairs else "")
        return f"{self.total} ({self.in_broker} in the broker, {self.unsent} unsent{waiting})"

    def newest_version(self) -> int:
        return max(self.by_version, default=0)

    def queues(self) -> str:
        """``coexist.write.cloud: 12, coexist.write.legacy: 8``."""
        return ", ".join(f"{q}: {n}" for q, n in sorted(self.by_queue.items()))


class PreflightFacts(Protocol):
    """What the guards need to know about a domain; ``None`` means "cannot tell".

    An unknown fact fails its guard (fail closed): a migration team would
    rather force knowingly than move blind.
    """

    def last_reconciliation(self, domain: str) -> Reconciliation | None:
        """The domain's last finished reconciliation run, or None if there is none."""

    def last_routed_at(self, domain: str) -> datetime | None:
        """When the router last routed a change of the domain (None: never)."""

    def open_exceptions(self, domain: str) -> int | None:
        """Open (not archived) entries of the exception store for the domain."""

    def pending(self, domain: str, *, below_version: int | None = None,
                up_to_id: int | None = None) -> Pending | None:
        """Messages of the domain routed to an ERP writer or the report actor and not
        settled yet, sent to the broker or not (routed under a flag version below
        ``below_version``; with an outbox id up to ``up_to_id``).  A switch waits for it
        to reach 0 and the backlog guard counts it."""


@dataclass(frozen=True, slots=True)
class FreezeWindow:
    """A period (e.g. period close) during which no domain may move forward."""

    start: datetime
    end: datetime

    def active(self, now: datetime) -> bool:
        return self.start <= now < self.end

    def __str__(self) -> str:
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


def parse_freeze_windows(text: str | None, *, source: str = "COEXIST_FREEZE") -> tuple[
    FreezeWindow, ...
]:
    """Parse ``"START/END,START/END"`` (ISO 8601 with a time zone, e.g.
    ``2026-11-28T00:00Z/2026-12-02T00:00Z``); ``source`` names the origin in errors."""
    windows = []
    for raw in (text or "").replace(";", ",").split(","):
        item = raw.strip()
        if not item:
            continue
        start_s, sep, end_s = item.partition("/")
        if not sep:
            raise FlagError(f"{source}: freeze window {item!r} must look like START/END")
        try:
            start, end = (datetime.fromisoformat(s.strip()) for s in (start_s, end_s))
        except ValueError as exc:
            raise FlagError(f"{source}: freeze window {item!r}: {exc}") from None
        if start.tzinfo is None or end.tzinfo is None:
            raise FlagError(f"{source}: freeze window {item!r} needs a time zone (e.g. Z)")
        if end <= start:
            raise FlagError(f"{source}: freeze window {item!r} ends before it starts")
        windows.append(FreezeWindow(start, end))
    return tuple(windows)


@dataclass(frozen=True, slots=True)
class GuardPolicy:
    max_drift_pct: float = DEFAULT_MAX_DRIFT_PCT
    max_backlog: int = DEFAULT_MAX_BACKLOG
    freeze_windows: tuple[FreezeWindow, ...] = ()
    #: A reconciliation this young counts even if a change was routed after it started.
    max_reconcile_age_s: float = DEFAULT_MAX_RECONCILE_AGE_S


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    #: False for rules that even ``--force`` cannot override.
    overridable: bool = True


@dataclass(frozen=True)
class TransitionPlan:
    current: FlagState
    proposed: FlagState
    forward: bool
    backward: bool
    checks: tuple[Check, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def blocking(self, force: bool) -> tuple[Check, ...]:
        """Failed checks that stop the change (with ``force``, only the non-overridable ones)."""
        return tuple(c for c in self.failed if not force or not c.overridable)

    def allowed(self, force: bool = False) -> bool:
        return not self.blocking(force)

    @property
    def direction(self) -> str:
        if self.forward and self.backward:
            return "forward and back"
        return "forward" if self.forward else "back" if self.backward else "no change"


def propose(current: FlagState, mode: Mode, rollout: Rollout = FULL) -> FlagState:
    """The state after setting ``mode`` with ``rollout``; raises FlagError if incoherent."""
    d = current.domain
    if rollout.is_full:
        base = mode
    elif rollout.percent_buckets == 0:
        raise FlagError(f"{d}: a rollout of 0% selects nothing; use rollback instead")
    elif current.is_partial:
        if mode != current.mode:
            raise FlagError(
                f"{d} is mid-rollout ({current.describe()}): complete it "
                f"(set {d} {current.mode} --percent 100) or roll it back to "
                f"{current.base_mode} before rolling out {mode}"
            )
        base = current.base_mode
    elif mode.step <= current.mode.step:
        raise FlagError(
            f"{d}: a rollout moves part of the domain forward from {current.mode}; "
            f"{mode} is not ahead of it"
        )
    else:
        base = current.mode
    if current.is_partial and rollout.is_full and mode not in (current.mode, current.base_mode):
        raise FlagError(
            f"{d} is mid-rollout ({current.describe()}): complete it or roll it back "
            f"to {current.base_mode} before setting {mode}"
        )
    return FlagState(d, mode, base, rollout, current.version + 1)


def rollback_target(current: FlagState) -> FlagState:
    """One step back: undo a partial rollout, else the previous mode for every record."""
    d = current.domain
    if current.is_partial:
        mode = current.base_mode
    elif current.mode.step == 0:
        raise FlagError(f"{d} is already in {Mode.LEGACY}; there is nothing to roll back")
    else:
        mode = MODES[current.mode.step - 1]
    return FlagState(d, mode, mode, FULL, current.version + 1)


def _moves(old: FlagState, new: FlagState) -> tuple[bool, bool, int]:
    """(some record moves forward, some record moves back, largest step any record takes)."""
    same_pair = (old.mode, old.base_mode) == (new.mode, new.base_mode)
    forward = (
        new.mode.step > old.mode.step
        or new.base_mode.step > old.base_mode.step
        or (same_pair and old.is_partial and not old.rollout.covers(new.rollout))
    )
    backward = (
        new.mode.step < old.mode.step
        or new.base_mode.step < old.base_mode.step
        or (same_pair and old.is_partial and not new.rollout.covers(old.rollout))
    )
    # A record may be in any of old's modes and end in any of new's.
    jump = max(abs(a.step - b.step) for a in _modes(old) for b in _modes(new))
    return forward, backward, jump


def _modes(state: FlagState) -> tuple[Mode, ...]:
    return (state.mode, state.base_mode) if state.is_partial else (state.mode,)


def _leaves_cloud_only(old: FlagState, new: FlagState) -> bool:
    """True when some record now in cloud_only would move back (narrowing included)."""
    if old.mode != Mode.CLOUD_ONLY:
        return False
    return new.mode != Mode.CLOUD_ONLY or not new.rollout.covers(old.rollout)


def plan(
    current: FlagState,
    proposed: FlagState,
    flags: Mapping[str, FlagState],
    facts: PreflightFacts,
    policy: GuardPolicy,
    now: datetime,
) -> TransitionPlan:
    """Check ``current -> proposed`` against the rules and the guard facts."""
    d = current.domain
    forward, backward, jump = _moves(current, proposed)
    checks: list[Check] = []
    warnings: list[str] = []
    if current.same_setting(proposed):
        checks.append(Check("change", False, f"{d} is already {current.describe()}", False))
    if jump > 1:
        checks.append(Check(
            "one step", False,
            f"{current.describe()} -> {proposed.describe()} skips a step; "
            "move one step at a time or use --force",
        ))
    if forward:
        checks.extend(_forward_guards(d, proposed, flags, facts, policy, now))
    if _leaves_cloud_only(current, proposed):
        checks.append(_backfill_check(d, current, facts, policy))
    if backward:
        for other, ups in UPSTREAM.items():
            if d in ups and flags[other].mode.step > proposed.level.step:
                warnings.append(
                    f"downstream {other} is in {flags[other].describe()}, ahead of {d}"
                )
    return TransitionPlan(current, proposed, forward, backward, tuple(checks), tuple(warnings))


def _forward_guards(
    d: str,
    proposed: FlagState,
    flags: Mapping[str, FlagState],
    facts: PreflightFacts,
    policy: GuardPolicy,
    now: datetime,
) -> list[Check]:
    checks = [_drift_check(d, facts, policy, now)]
    checks.append(_count_check(
        "exceptions", facts.open_exceptions(d), 0, f"open exceptions for {d}",
        "resolve, replay or archive them (coexist dlq list)",
    ))
    checks.append(_backlog_check(d, facts.pending(d), policy))
    behind = [
        f"{u} ({flags[u].describe()})"
        for u in UPSTREAM[d]
        if flags[u].level.step < proposed.mode.step
    ]
    checks.append(Check(
        "upstream", not behind,
        f"upstream behind {proposed.mode}: {', '.join(behind)}" if behind
        else f"upstream ({', '.join(UPSTREAM[d]) or 'none'}) at least at {proposed.mode}",
    ))
    active = [w for w in policy.freeze_windows if w.active(now)]
    checks.append(Check(
        "freeze", not active,
        f"freeze window {active[0]} is active" if active else "no freeze window active",
    ))
    return checks


def _drift_check(d: str, facts: PreflightFacts, policy: GuardPolicy, now: datetime) -> Check:
    """The last reconciliation: finished, measured, recent enough, drift within the limit.

    Recent enough: it started after the router last routed a change of the domain (so it
    read both ERPs after that change), or it finished within ``max_reconcile_age_s``.
    """
    rec = facts.last_reconciliation(d)
    if rec is None:
        return Check("drift", False, f"no reconciliation run for {d}; run one first "
                                     f"(coexist reconcile {d})")
    if not rec.measured:
        return Check("drift", False, f"the last reconciliation ({rec.name()}) ended "
                                     f"{rec.status} and measured nothing; run one again "
                                     f"(coexist reconcile {d})")
    fresh = _freshness(d, rec, facts.last_routed_at(d), policy, now)
    if fresh.startswith("stale"):
        return Check("drift", False, f"the last reconciliation ({rec.name()}) is {fresh}; "
                                     f"reconcile again (coexist reconcile {d})")
    assert rec.drift_pct is not None
    ok = rec.drift_pct <= policy.max_drift_pct
    return Check(
        "drift", ok,
        f"last reconciliation ({rec.name()}, {fresh}) drift {rec.drift_pct:g}% "
        f"{'<=' if ok else '>'} threshold {policy.max_drift_pct:g}%",
    )


def _freshness(d: str, rec: Reconciliation, routed_at: datetime | None, policy: GuardPolicy,
               now: datetime) -> str:
    """Why ``rec`` is recent enough, or ``stale: ...`` saying why not."""
    started = rec.started_at or rec.finished_at
    if routed_at is None:
        return f"no {d} change routed since"
    if started >= routed_at:
        return f"started after the last routed {d} change at {routed_at.isoformat()}"
    age_s = max(0.0, (now - rec.finished_at).total_seconds())
    limit = policy.max_reconcile_age_s
    if age_s <= limit:
        return f"{_age(age_s)} old, within the {_age(limit)} allowed"
    return (f"stale: it started before the last routed {d} change at "
            f"{routed_at.isoformat()} and is {_age(age_s)} old, more than the "
            f"{_age(limit)} allowed (COEXIST_MAX_RECONCILE_AGE_S)")


def _age(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


def _backlog_check(d: str, pending: Pending | None, policy: GuardPolicy) -> Check:
    if pending is None:
        return Check("backlog", False, f"cannot tell how many {d} messages are routed but "
                                       "not yet applied")
    ok = pending.total <= policy.max_backlog
    detail = (f"{pending.total} {d} message(s) routed{pending.scope} but not yet applied "
              f"({pending.in_broker} in the broker, {pending.unsent} unsent)")
    if pending.total:
        detail += f" [{pending.queues()}]"
    if not ok:
        detail += (f" (limit {policy.max_backlog}); start a worker (coexist worker / coexist "
                   "run) and let it apply them")
    return Check("backlog", ok, detail)


def _count_check(name: str, value: int | None, limit: int, what: str, hint: str) -> Check:
    if value is None:
        return Check(name, False, f"cannot tell the number of {what}")
    ok = value <= limit
    return Check(name, ok, f"{value} {what}" + ("" if ok else f" (limit {limit}); {hint}"))


def _backfill_check(
    d: str, current: FlagState, facts: PreflightFacts, policy: GuardPolicy
) -> Check:
    rec = facts.last_reconciliation(d)
    since = current.changed_at
    routed_at = facts.last_routed_at(d)
    started = (rec.started_at or rec.finished_at) if rec is not None else None
    # Every change routed while cloud_only missed the legacy ERP: the run must have read
    # both after the last one (no age allowance here).
    done = (
        rec is not None and rec.measured and since is not None and started is not None
        and rec.finished_at >= since and (routed_at is None or started >= routed_at)
        and rec.drift_pct is not None and rec.drift_pct <= policy.max_drift_pct
    )
    if done and rec is not None:
        return Check("backfill", True,
                     f"legacy backfilled: a reconciliation after the switch to cloud_only "
                     f"and after the last routed {d} change ({rec.name()}) found drift "
                     f"{rec.drift_pct:g}%")
    stale = ""
    if (rec is not None and rec.measured and since is not None and rec.finished_at >= since
            and routed_at is not None and started is not None and started < routed_at):
        stale = (f" (the last reconciliation, {rec.name()}, started before the last routed "
                 f"{d} change at {routed_at.isoformat()})")
    pending = facts.pending(d)
    if pending is not None and pending.total:
        # A ``--repair`` run's repairs go through the outbox: until they are applied, the
        # reconciliation that follows still sees the drift they will remove.
        return Check(
            "backfill", False,
            f"{pending.describe()} routed {d} writes, repairs included, are not applied yet; "
            f"wait until `coexist status` shows none unsettled for {d}, then reconcile "
            f"again{stale} (backfill: {backfill_command(d)})",
        )
    return Check(
        "backfill", False,
        f"the legacy ERP was not written while {d} was cloud_only; backfill it first: "
        f"{backfill_command(d)}, then reconcile again{stale}",
    )


def backfill_command(domain: str) -> str:
    """The command that backfills the legacy ERP from the cloud SoR for ``domain``
    (reconciliation's repair; without ``--yes`` it only shows what it would do)."""
    return f"coexist reconcile {domain} --repair --yes"
