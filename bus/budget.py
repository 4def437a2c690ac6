"""The retry budget of one message, shared by every layer that retries while handling it.

Two layers retry a technical failure of a routed write: the adapter retries the HTTP
request in the call (``workers.cloud_erp``), and the failure middleware re-enqueues the
message with backoff (``bus.retry``).  Left alone, each multiplies the other (6 HTTP
attempts inside each of 9 deliveries).  The budget bounds them together:

* **failures per message** (``limit``): every failed attempt counts, an HTTP attempt
  that failed technically as well as a delivery that failed without one (a database
  error); the count travels with the message (``options["failures"]``), so a retry
  delivery starts with what the earlier ones spent.  When it is spent the adapter stops
  retrying and the middleware records the message as a ``technical`` exception with
  its attempt history (``options["retry_history"]``) instead of enqueueing it again;
* **time per delivery** (``deadline``): an in-call retry starts only if its backoff
  ends before the delivery's deadline; later, the delivery fails and the bus retries
  with its own (longer) backoff, so a worker thread is never held by a long outage.

The middleware opens a budget for each message it handles (``scope``); code that runs
outside a message (the outbox relay, the router's capture, reports) has none and keeps
the adapter's per-call attempts.  The figures are settings (``COEXIST_RETRY_*``,
``workers.config``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

#: Failed attempts (HTTP attempts and deliveries) one message may spend in all.
RETRY_BUDGET = 24
#: Seconds one delivery may spend on in-call retries.
RETRY_DELIVERY_S = 30.0
#: Entries of ``options["retry_history"]`` kept (the newest), one per failed delivery.
HISTORY_MAX = 12


@dataclass(slots=True)
class Budget:
    """What one delivery of a message may still spend on retries."""

    #: Failures the message may spend in all deliveries.
    limit: int
    #: Failures the earlier deliveries spent.
    spent_before: int = 0
    #: ``time.monotonic()`` after which no in-call retry starts (None: no deadline).
    deadline: float | None = None
    #: Failed attempts of this delivery so far.
    failures: int = 0

    @property
    def spent(self) -> int:
        return self.spent_before + self.failures

    @property
    def left(self) -> int:
        return max(0, self.limit - self.spent)

    def failed(self) -> None:
        """Count one failed attempt of this delivery."""
        self.failures += 1

    def may_retry(self, wait_s: float) -> bool:
        """Whether an in-call retry after waiting ``wait_s`` fits the budget: failures
        left, and the wait ends before the deadline."""
        if self.left <= 0:
            return False
        return self.deadline is None or time.monotonic() + wait_s < self.deadline

    def remaining_s(self) -> float | None:
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())


_current: ContextVar[Budget | None] = ContextVar("coexist_retry_budget", default=None)


def current() -> Budget | None:
    """The budget of the message being handled on this thread, if any."""
    return _current.get()


def open_budget(budget: Budget | None) -> None:
    """Make ``budget`` the current one (``None`` closes it); for the middleware, whose
    before and after hooks run apart."""
    _current.set(budget)


@contextlib.contextmanager
def scope(budget: Budget | None) -> Iterator[Budget | None]:
    """``budget`` as the current one for a block."""
    token = _current.set(budget)
    try:
        yield budget
    finally:
        _current.reset(token)


def counted(exc: BaseException) -> BaseException:
    """Mark ``exc`` as a failure already counted attempt by attempt (the adapter's), so
    the middleware does not count the delivery's failure once more."""
    exc.__dict__["coexist_budget_counted"] = True
    return exc


def is_counted(exc: BaseException) -> bool:
    return bool(getattr(exc, "__dict__", {}).get("coexist_budget_counted"))
