"""Cutover operations as functions: what ``coexist cutover`` does, callable from code.

The CLI is a thin shell over these; end-to-end tests and the demo call them
directly::

    cutover = Cutover(store, SqlPreflightFacts(engine), policy)   # app.cutover builds it
    p = cutover.plan("customer", Mode.SHADOW)              # nothing written
    cutover.drain_before("customer", timeout_s=30)          # what is routed so far: applied
    state = cutover.set("customer", Mode.SHADOW, actor="alice", reason="pilot")
    cutover.wait_for_drain(state, timeout_s=30)             # what older versions still route
    state = cutover.rollback("customer", actor="alice", reason="drift found")

``set``/``rollback`` raise ``TransitionRefused`` (with the plan) when a check
blocks the change; nothing is written then.

The switch protocol (the CLI's ``set`` and ``rollback``): wait until the router has
routed every change the ERPs logged (``workers.router.lag``), then until every message
of the domain routed so far is settled (``drain_before``: applied, refused or recorded
by a consumer, counted from the settle ledger, ``bus.ledger``), re-plan with the facts
as they are now, commit the new flag, then wait for the messages still routed under
older versions while the routers learn of it (``wait_for_drain``).  A drain that does
not finish in time before the switch changes nothing (``DrainTimeout``); after it, the
flag is set and the timeout says what is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from coexistence.flags import FULL, FlagError, FlagState, Mode, Rollout, check_domain
from coexistence.preflight import (
    GuardPolicy,
    Pending,
    PreflightFacts,
    TransitionPlan,
    backfill_command,
    plan,
    propose,
    rollback_target,
)
from workers.flags.store import FlagStore

#: How often the drain waits look at the ledger.
DRAIN_POLL_S = 0.25
#: While waiting, a progress line at least this often (and whenever the count changes).
PROGRESS_EVERY_S = 5.0

#: Told what is still outstanding while a drain waits.
Progress = Callable[[str], None]


def outstanding(domain: str, pending: Pending, version: int) -> str:
    """``customer: 20 message(s) routed under flag version <= 3 not yet applied (12 in the
    broker, 8 unsent) [coexist.write.cloud: 20]``."""
    waiting = (f", {pending.waiting_repairs} repair(s) waiting for the SoR"
               if pending.waiting_repairs else "")
    return (f"{domain}: {pending.total} message(s) routed under flag version <= {version} "
            f"not yet applied ({pending.in_broker} in the broker, {pending.unsent} unsent"
            f"{waiting}) [{pending.queues()}]")


class _UpTo:
    """The facts, with ``pending`` limited to messages up to an outbox id (a watermark)."""

    def __init__(self, facts: PreflightFacts, up_to_id: int) -> None:
        self.facts, self.up_to_id = facts, up_to_id

    def __getattr__(self, name: str):
        return getattr(self.facts, name)

    def pending(self, domain: str, *, below_version: int | None = None,
                up_to_id: int | None = None) -> Pending | None:
        limit = self.up_to_id if up_to_id is None else min(up_to_id, self.up_to_id)
        found = self.facts.pending(domain, below_version=below_version, up_to_id=limit)
        return None if found is None else replace(found, scope=" before the wait")


class TransitionRefused(FlagError):
    """A check blocked the change; ``plan`` says which."""

    def __init__(self, message: str, plan: TransitionPlan) -> None:
        super().__init__(message)
        self.plan = plan


class DrainTimeout(FlagError):
    """The flag is set, but work routed under older versions is still in flight."""


class Cutover:
    def __init__(self, store: FlagStore, facts: PreflightFacts, policy: GuardPolicy) -> None:
        self.store = store
        self.facts = facts
        self.policy = policy

    def flags(self) -> dict[str, FlagState]:
        """The truth: every domain's flag from the SQL audit."""
        return self.store.audit.latest()

    def plan(self, domain: str, mode: Mode, rollout: Rollout = FULL,
             now: datetime | None = None, drained_to: int | None = None) -> TransitionPlan:
        """``drained_to``: the watermark ``drain_before`` waited for; the backlog guard then
        counts only messages up to it (what was routed while it waited is left to the
        wait after the switch, or a busy domain could never move)."""
        flags = self.flags()
        current = flags[check_domain(domain)]
        return plan(current, propose(current, mode, rollout), flags,
                    self._facts(drained_to), self.policy, now or datetime.now(UTC))

    def plan_rollback(self, domain: str, now: datetime | None = None,
                      drained_to: int | None = None) -> TransitionPlan:
        flags = self.flags()
        current = flags[check_domain(domain)]
        return plan(current, rollback_target(current), flags, self._facts(drained_to),
                    self.policy, now or datetime.now(UTC))

    def _facts(self, drained_to: int | None) -> PreflightFacts:
        return self.facts if drained_to is None else _UpTo(self.facts, drained_to)

    def apply(self, p: TransitionPlan, *, actor: str, reason: str, force: bool = False,
              action: str = "set", skipped_wait: str | None = None) -> FlagState:
        """Commit a plan if no check blocks it (failed checks overridden by ``force``).

        ``skipped_wait`` says that the switch did not wait for the drain (``--no-wait``)
        and what was outstanding; it is audited with the overridden checks, as forced.
        """
        blocking = p.blocking(force)
        if blocking:
            overridable = any(c.overridable for c in blocking)
            raise TransitionRefused(
                f"{p.current.domain}: refused, {', '.join(c.name for c in blocking)} failed"
                + ("; override with --force --reason if you accept the risk"
                   if overridable else ""),
                p,
            )
        overridden = tuple(f"{c.name}: {c.detail}" for c in p.failed)
        if skipped_wait:
            overridden += (f"wait: skipped (--no-wait); {skipped_wait}",)
        return self.store.commit(p.current, p.proposed, actor=actor, reason=reason,
                                 action=action, forced=bool(overridden), overridden=overridden)

    def set(self, domain: str, mode: Mode, rollout: Rollout = FULL, *, actor: str,
            reason: str, force: bool = False) -> FlagState:
        return self.apply(self.plan(domain, mode, rollout), actor=actor, reason=reason,
                          force=force)

    def rollback(self, domain: str, *, actor: str, reason: str,
                 force: bool = False) -> FlagState:
        p = self.plan_rollback(domain)
        if not force and any(c.name == "backfill" and not c.ok for c in p.checks):
            raise TransitionRefused(
                f"{domain} is cloud_only: the legacy ERP missed every change since; backfill "
                f"it first with `{backfill_command(domain)}`, then roll back (or force)", p)
        return self.apply(p, actor=actor, reason=reason, force=force, action="rollback")

    def pending(self, domain: str, below_version: int | None = None) -> Pending | None:
        return self.facts.pending(domain, below_version=below_version)

    def drain_before(self, domain: str, timeout_s: float,
                     progress: Progress | None = None) -> Pending:
        """Before a switch: block until every message of ``domain`` routed so far (to an
        ERP writer or the report actor) is settled.  Messages routed while it waits are
        left to ``wait_for_drain`` after the switch (a busy domain never reaches 0).

        Returns what was outstanding when it started; raises ``DrainTimeout`` (nothing
        changed) naming what is still outstanding after ``timeout_s``.
        """
        version = self.flags()[check_domain(domain)].version
        first = self._pending(domain)
        if first.total == 0:
            return first
        self._wait(domain, version, timeout_s, progress, up_to_id=first.newest_id,
                   after=lambda left: (
                       f"{outstanding(domain, left, version)} after {timeout_s:g} s; the "
                       f"flag was not changed.  Start a worker (`coexist worker`, or "
                       f"`coexist run` on the embedded default) and run this again, or pass "
                       f"--no-wait to switch anyway (audited as such)"))
        return first

    def wait_for_drain(self, state: FlagState, timeout_s: float,
                       progress: Progress | None = None) -> None:
        """After a switch: block until no message routed under a version older than
        ``state``'s is unsettled."""
        self._wait(state.domain, state.version - 1, timeout_s, progress,
                   below_version=state.version,
                   after=lambda left: (
                       f"the flag is set (version {state.version}), but "
                       f"{outstanding(state.domain, left, state.version - 1)} after "
                       f"{timeout_s:g} s; start a worker and watch `coexist cutover status "
                       f"{state.domain}` before the next step"))

    def _pending(self, domain: str, **where: int | None) -> Pending:
        left = self.facts.pending(domain, **where)
        if left is None:
            raise DrainTimeout(f"{domain}: cannot tell which messages are still in flight "
                               "(the settle ledger is not readable); pass --no-wait to switch "
                               "anyway")
        return left

    def _wait(self, domain: str, version: int, timeout_s: float, progress: Progress | None,
              after: Callable[[Pending], str], **where: int | None) -> None:
        deadline = time.monotonic() + timeout_s
        said, said_at = -1, 0.0
        while True:
            left = self._pending(domain, **where)
            if left.total == 0:
                return
            now = time.monotonic()
            if now >= deadline:
                raise DrainTimeout(after(left))
            if progress is not None and (left.total != said or now - said_at
                                         >= PROGRESS_EVERY_S):
                progress(f"{outstanding(domain, left, version)}; waiting...")
                said, said_at = left.total, now
            time.sleep(min(DRAIN_POLL_S, max(0.0, deadline - now)))
