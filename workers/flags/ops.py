"""Cutover operations as functions: what ``coexist cutover`` does, callable from code.

The CLI is a thin shell over these; end-to-end tests and the demo call them
directly::

    cutover = Cutover(store, SqlPreflightFacts(engine), policy)   # app.cutover builds it
    p = cutover.plan("customer", Mode.SHADOW)              # nothing written
    state = cutover.set("customer", Mode.SHADOW, actor="alice", reason="pilot")
    cutover.wait_for_drain(state, timeout_s=30)
    state = cutover.rollback("customer", actor="alice", reason="drift found")

``set``/``rollback`` raise ``TransitionRefused`` (with the plan) when a check
blocks the change; nothing is written then.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from coexistence.flags import FULL, FlagError, FlagState, Mode, Rollout, check_domain
from coexistence.preflight import (
    GuardPolicy,
    PreflightFacts,
    TransitionPlan,
    backfill_command,
    plan,
    propose,
    rollback_target,
)
from workers.flags.store import FlagStore

#: How often ``wait_for_drain`` looks at the in-flight count.
DRAIN_POLL_S = 0.5


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
             now: datetime | None = None) -> TransitionPlan:
        flags = self.flags()
        current = flags[check_domain(domain)]
        return plan(current, propose(current, mode, rollout), flags, self.facts, self.policy,
                    now or datetime.now(UTC))

    def plan_rollback(self, domain: str, now: datetime | None = None) -> TransitionPlan:
        flags = self.flags()
        current = flags[check_domain(domain)]
        return plan(current, rollback_target(current), flags, self.facts, self.policy,
                    now or datetime.now(UTC))

    def apply(self, p: TransitionPlan, *, actor: str, reason: str, force: bool = False,
              action: str = "set") -> FlagState:
        """Commit a plan if no check blocks it (failed checks overridden by ``force``)."""
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

    def wait_for_drain(self, state: FlagState, timeout_s: float) -> None:
        """Block until no message routed under a version older than ``state``'s is in flight."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.facts.in_flight(state.domain, state.version)
            if left == 0:
                return
            if time.monotonic() >= deadline:
                what = "an unknown number of" if left is None else str(left)
                raise DrainTimeout(
                    f"the flag is set, but {what} {state.domain} message(s) routed under "
                    f"older flag versions are still in flight after {timeout_s:g}s; watch "
                    "`coexist cutover status` (backlog) before the next step"
                )
            time.sleep(DRAIN_POLL_S)
