"""Failure classes: the middleware that replaces dramatiq's ``Retries``.

What happens to a message whose actor raised:

* ``MessageDecodeError`` -> exception store, class ``undecodable``, with the raw
  bytes; acked.
* a business error (``bus.errors.is_business``, or the actor's ``throws``) ->
  exception store, class ``business``, no retry; acked.
* anything else (``TechnicalError``, unknown exceptions, timeouts, rate limits)
  -> re-enqueued with capped, jittered exponential backoff, at most
  ``max_retries`` times; then exception store, class ``technical``; acked.

"Acked" always means: after the exception-store row (or the retry's publish,
confirmed by the broker) is committed.  Two gaps of dramatiq's ``Retries`` are
closed: when the retry cannot be enqueued (broker down) it logs and the worker
acks, losing the message; and its backoff defaults reach 7 days.  Here every
failure to record or re-enqueue asks the consumer to give the message back to
its queue (``request_redelivery``) instead, so it is handled again later.

dramatiq swallows exceptions raised in ``after_*`` hooks (and in ``before_*``
ones except ``SkipMessage``/``MiddlewareError``), so this middleware never lets
one escape: it catches, logs and requests redelivery.

Retry state lives in ``message.options``: ``retries`` (how many retries were
enqueued so far; a replay resets it), ``last_error``, and the cross-layer budget's
``failures`` (failed attempts so far, HTTP attempts of the adapter included) and
``retry_history`` (one line per failed delivery).  A technical failure is recorded
once ``max_retries`` retries were made *or* the message's retry budget
(``bus.budget``: ``retry_budget`` failures in all) is spent, whichever comes first.
"""

from __future__ import annotations

import logging
import random
import time
from datetime import UTC, datetime
from typing import Any, Protocol

from dramatiq import Middleware
from dramatiq.errors import Retry

from bus import budget as retry_budget
from bus.brokers.base import request_redelivery
from bus.errors import MessageDecodeError, is_business
from bus.exception_store import call_site

#: Backoff before the first retry, in milliseconds (15 s).
RETRY_MIN_BACKOFF_MS = 15_000
#: Longest wait between two retries, in milliseconds (10 min).  Kept below
#: RabbitMQ's default ``consumer_timeout`` (30 min): a waiting retry is an
#: unacked delivery on the ``.DQ`` queue and must not trip it.
RETRY_MAX_BACKOFF_MS = 600_000
#: Retries after the first failure before a technical failure goes to the
#: exception store: 15 s, 30 s, 1, 2, 4, 8, 10, 10 min with jitter, about 36-72
#: minutes in all, enough to ride out a deploy or a short outage.
MAX_RETRIES = 8
#: How long a worker thread waits before handing back a message whose failure
#: could not be recorded; keeps a broker or database outage from spinning.
REDELIVERY_PAUSE_MS = 500
#: Longest error message kept in ``options["last_error"]`` (it travels with the message).
LAST_ERROR_MAX_CHARS = 500

log = logging.getLogger(__name__)

FAILURE_CLASSES = ("business", "technical", "dead_letter", "undecodable")


class FailureRecorder(Protocol):
    """The part of ``bus.exception_store.ExceptionStore`` this middleware needs.

    ``record`` must commit before it returns: the message is acked right after.
    """

    def record(
        self,
        *,
        failure_class: str,
        queue_name: str,
        actor_name: str,
        message_id: str,
        envelope: Any,
        raw: bytes | None,
        message: dict[str, Any] | None,
        error_type: str,
        error_message: str,
        call_site: str,
        attempts: int,
        failed_at: datetime | None = None,
    ) -> int: ...


def backoff_ms(retries: int, *, min_ms: int, max_ms: int) -> int:
    """Delay before retry number ``retries + 1``: exponential, capped, jittered.

    The exponential step doubles from ``min_ms``; the result lies in
    [step/2, step] ("equal jitter"), so retries of a burst of failures spread
    out instead of hammering a recovering service together.
    """
    step = min(max_ms, min_ms * (2 ** min(retries, 30)))
    return int(random.uniform(step / 2, step))


class FailureClasses(Middleware):
    """Routes failed messages by failure class: retry, or record and ack.

    Parameters:
      store: where failures are recorded (``ExceptionStore``).
      max_retries / min_backoff_ms / max_backoff_ms: defaults; an actor or a
        message may override them with the options ``max_retries``,
        ``min_backoff`` and ``max_backoff`` (milliseconds, as in dramatiq).
      redelivery_pause_ms: see ``REDELIVERY_PAUSE_MS``.
      budget / delivery_s: the cross-layer retry budget (``bus.budget``): failed
        attempts one message may spend in all, and seconds one delivery may spend on
        in-call retries; option ``retry_budget`` overrides the first per actor/message.
    """

    def __init__(
        self,
        store: FailureRecorder,
        *,
        max_retries: int = MAX_RETRIES,
        min_backoff_ms: int = RETRY_MIN_BACKOFF_MS,
        max_backoff_ms: int = RETRY_MAX_BACKOFF_MS,
        redelivery_pause_ms: int = REDELIVERY_PAUSE_MS,
        budget: int = retry_budget.RETRY_BUDGET,
        delivery_s: float | None = retry_budget.RETRY_DELIVERY_S,
    ):
        if max_retries < 0 or budget < 1:
            raise ValueError("max_retries must be >= 0 and budget >= 1")
        self.store = store
        self.max_retries = max_retries
        self.min_backoff_ms = min_backoff_ms
        self.max_backoff_ms = max_backoff_ms
        self.redelivery_pause_ms = redelivery_pause_ms
        self.budget = budget
        self.delivery_s = delivery_s

    @property
    def actor_options(self) -> set[str]:
        return {"max_retries", "min_backoff", "max_backoff", "throws", "retry_budget"}

    def before_process_message(self, broker, message):
        # The handler's adapters spend from it (``bus.budget.current()``).
        deadline = time.monotonic() + self.delivery_s if self.delivery_s else None
        retry_budget.open_budget(retry_budget.Budget(
            limit=int(self._option(broker, message, "retry_budget", self.budget)),
            spent_before=int(message.options.get("failures", 0)),
            deadline=deadline))

    def after_skip_message(self, broker, message):
        retry_budget.open_budget(None)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        budget = retry_budget.current()
        retry_budget.open_budget(None)
        if exception is None:
            return
        try:
            self._route(broker, message, exception, budget)
        except Exception:
            log.exception(
                "Could not record or retry failed message %s; handing it back to its queue.",
                message.message_id,
            )
            if self.redelivery_pause_ms:
                time.sleep(self.redelivery_pause_ms / 1000)
            request_redelivery(message)

    def _option(self, broker, message, name: str, default: Any) -> Any:
        if name in message.options:
            return message.options[name]
        try:
            actor = broker.get_actor(message.actor_name)
        except Exception:
            return default
        return actor.options.get(name, default)

    def _route(self, broker, message, exception: BaseException,
               budget: retry_budget.Budget | None = None) -> None:
        if isinstance(exception, MessageDecodeError):
            self._record("undecodable", message, exception)
            return
        throws = self._option(broker, message, "throws", None)
        if is_business(exception) or (throws and isinstance(exception, throws)):
            self._record("business", message, exception)
            return
        retries = int(message.options.get("retries", 0))
        max_retries = self._option(broker, message, "max_retries", self.max_retries)
        limit = int(self._option(broker, message, "retry_budget", self.budget))
        spent_before = int(message.options.get("failures", 0))
        # This delivery's failed HTTP attempts, plus the delivery's own failure unless the
        # adapter raised it after counting its attempts.
        spent_now = budget.failures if budget is not None else 0
        if not retry_budget.is_counted(exception):
            spent_now += 1
        failures = spent_before + max(1, spent_now)
        error = f"{type(exception).__name__}: {exception}"[:LAST_ERROR_MAX_CHARS]
        history = [*message.options.get("retry_history", ()),
                   f"{datetime.now(UTC).isoformat(timespec='seconds')} delivery {retries + 1}: "
                   f"{max(1, spent_now)} failed attempt(s); {error[:200]}"][
                       -retry_budget.HISTORY_MAX:]
        state = {"failures": failures, "retry_history": history, "last_error": error}
        if retries >= max_retries or failures >= limit:
            spent = message.copy(options=state)
            why = (f"retry budget spent: {failures} failed attempts of {limit} in "
                   f"{retries + 1} deliveries" if failures >= limit else
                   f"{retries + 1} deliveries ({max_retries} retries), {failures} failed "
                   f"attempts of {limit}")
            self._record("technical", spent, exception, note=why)
            return
        delay = backoff_ms(
            retries,
            min_ms=self._option(broker, message, "min_backoff", self.min_backoff_ms),
            max_ms=self._option(broker, message, "max_backoff", self.max_backoff_ms),
        )
        if isinstance(exception, Retry) and exception.delay is not None:
            delay = min(exception.delay, self.max_backoff_ms)
        asked = getattr(exception, "retry_after_s", None)
        if isinstance(asked, int | float) and asked > 0:
            # The service's Retry-After is a floor for the next delivery too.
            delay = max(delay, min(int(asked * 1000), self.max_backoff_ms))
        retry = message.copy(options={"retries": retries + 1, **state})
        log.info(
            "Retrying message %s (%d/%d, %d/%d failed attempts) in %d ms after %s.",
            message.message_id, retries + 1, max_retries, failures, limit, delay,
            type(exception).__name__,
        )
        # Raises when the broker does not confirm: then we must not ack (see _route's caller).
        broker.enqueue(retry, delay=delay)

    def _record(self, failure_class: str, message, exception: BaseException,
                note: str | None = None) -> None:
        args = message.args
        envelope = args[0] if args and isinstance(args[0], dict) else None
        raw = getattr(exception, "raw", None) if failure_class == "undecodable" else None
        if failure_class == "undecodable":
            envelope = None
            if raw is None:
                raw = message.encode()
        record_id = self.store.record(
            failure_class=failure_class,
            queue_name=message.queue_name,
            actor_name=message.actor_name,
            message_id=message.message_id,
            envelope=envelope,
            raw=raw,
            message=message.asdict(),
            error_type=type(exception).__name__,
            error_message=f"{exception} ({note})" if note else str(exception),
            call_site=call_site(exception),
            attempts=int(message.options.get("retries", 0)) + 1,
            failed_at=datetime.now(UTC),
        )
        log.warning(
            "Message %s failed (%s: %s); recorded as %s exception %s.",
            message.message_id, type(exception).__name__, exception, failure_class, record_id,
        )
