"""The batch consumer: deliveries taken in batches, one state transaction and one ack each.

An actor opts in with the actor option ``batch=<handler of a list>`` (besides its
ordinary one-message function, which stays the fallback)::

    dramatiq.actor(deliver_one, queue_name=q, inbox="crm", batch=deliver_many,
                   batch_size=200, batch_wait_ms=5)

``BatchConsumers`` (installed by ``bus.brokers.setup``) takes such queues away from
dramatiq's worker threads when a ``dramatiq.Worker`` boots and runs one consumer
thread per queue instead:

1. take up to ``batch_size`` deliveries: whatever is buffered, or what arrives within
   ``batch_wait_ms`` after the first one;
2. with ``inbox="name"``: open ONE state transaction, claim every message id in one
   statement (duplicates drop out, acked without effect), call ``batch([first arg of
   each fresh message])`` with that transaction as ``bus.inbox.current()``, commit;
   without it: call the handler;
3. ack after the commit: ``basic_ack(multiple=True)`` on RabbitMQ, one transaction on
   the embedded broker.

A batch handler without an inbox may return the positions of messages it leaves to the
per-message path (the ERP writers do, for every case that needs a decision): those go
through it one by one, the others are acked with the batch.

When the batch handler raises, the transaction rolls back and every message of the
batch goes through the ordinary per-message path instead (dramatiq's middleware
pipeline: its own inbox claim, ``bus.retry``'s failure classes: business ->
exception store, technical -> retries).  A redelivered retry (``retries`` > 0) is
handled alone from the start.  So a poisoned message costs each neighbour one extra
attempt and never fails it, and costs itself one extra attempt in all; a crash
(kill -9) before the commit leaves claims and effects uncommitted and every delivery
unacked, so all of them come back and are applied once.  Order within a key is the
handler's business (version checks), as on the per-message path.

What the batch path does not do: it emits no ``before/after_process_message`` for the
messages of a committed batch (those hooks are per message: a time limit, an inbox
claim, a correlation context); it emits ``before/after_ack`` per message, as dramatiq
does, so middleware that must see every settled message hooks ``after_ack``.
Retries of a batch queue on RabbitMQ wait in ``<queue>.DQ`` like any other; this
module runs dramatiq's own delay-queue consumer for it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from queue import PriorityQueue
from typing import Any

from dramatiq import Middleware
from dramatiq.common import dq_name, q_name
from dramatiq.errors import ActorNotFound, BrokerConnectionError, Retry
from dramatiq.middleware import SkipMessage
from prometheus_client import Counter
from sqlalchemy import Engine

from bus import budget as retry_budget
from bus import inbox, stages
from bus.brokers.base import request_redelivery

log = logging.getLogger(__name__)
#: dramatiq's worker logger: its filters (``bus.brokers.setup``) apply to our lines too.
worker_log = logging.getLogger("dramatiq.worker.WorkerThread")

BATCH_OPTION = "batch"
#: Most deliveries in one batch (and half the prefetch).
BATCH_SIZE = 200
#: After the first delivery, how long to wait for more before handling the batch.
BATCH_WAIT_MS = 5
#: Batch consumer threads per queue and process: while one waits for its commit, another
#: takes the next batch.
BATCH_CONSUMERS = 2
#: How long one wait for a first delivery lasts before the loop checks for shutdown.
IDLE_TIMEOUT_MS = 1_000
#: Pause before a consumer whose connection broke is opened again.
RESTART_DELAY_S = 1.0
#: How often the connection is pumped (heartbeats, acks) while a batch is handled.
PUMP_EVERY_S = 0.2
_NO_QUEUE = "\x00coexist-no-queue"

BATCHES = Counter("coexist_bus_batches_total", "Batches handled by the batch consumer",
                  ["queue", "outcome"])
BATCHED = Counter("coexist_bus_batched_messages_total",
                  "Deliveries taken by the batch consumer (divided by batches: the mean size)",
                  ["queue"])


def is_batch_actor(actor: Any) -> bool:
    return callable(actor.options.get(BATCH_OPTION))


class BatchConsumers(Middleware):
    """Runs a ``BatchConsumer`` thread per queue of batch actors inside a dramatiq worker."""

    def __init__(self, engine: Engine | None):
        self.engine = engine
        self._queues: dict[int, list[str]] = {}
        self._threads: dict[int, list[BatchConsumer]] = {}

    @property
    def actor_options(self) -> set[str]:
        return {BATCH_OPTION, "batch_size", "batch_wait_ms", "batch_consumers"}

    def before_worker_boot(self, broker, worker) -> None:
        wanted = worker.consumer_whitelist
        queues = sorted({
            actor.queue_name for actor in map(broker.get_actor, broker.get_declared_actors())
            if is_batch_actor(actor) and (not wanted or actor.queue_name in wanted)
        })
        if not queues:
            return
        everything = set(wanted) if wanted else {q_name(q) for q in broker.get_declared_queues()}
        # dramatiq's threads no longer consume these (an empty set would mean "all").
        worker.consumer_whitelist = (everything - set(queues)) or {_NO_QUEUE}
        self._queues[id(worker)] = queues

    def after_worker_boot(self, broker, worker) -> None:
        threads = self._threads[id(worker)] = [
            BatchConsumer(broker, queue, self.engine, in_flight=worker.work_queue,
                          worker=worker)
            for queue in self._queues.pop(id(worker), [])
            for _ in range(_consumers(broker, queue))
        ]
        for thread in threads:
            thread.start()

    def before_worker_shutdown(self, broker, worker) -> None:
        threads = self._threads.pop(id(worker), [])
        for thread in threads:
            thread.stop()
        for thread in threads:
            thread.join(timeout=60)


class BatchConsumer(threading.Thread):
    """Consumes one queue in batches (see the module docstring).

    ``in_flight``: a queue whose ``join()`` should also wait for the batch being handled
    (the dramatiq worker's work queue, so ``Worker.join`` covers batches too).
    """

    def __init__(self, broker, queue_name: str, engine: Engine | None, *,
                 in_flight: PriorityQueue | None = None, idle_timeout_ms: int = IDLE_TIMEOUT_MS,
                 worker: Any = None):
        super().__init__(name=f"coexist-batch-{queue_name}", daemon=True)
        self.broker = broker
        self.queue_name = queue_name
        self.engine = engine
        self.in_flight = in_flight
        #: The dramatiq worker, whose ``join()`` must also wait for retries held here.
        self.worker = worker
        self.idle_timeout_ms = idle_timeout_ms
        self.running = True
        self.consumer: Any = None
        actors = [broker.get_actor(name) for name in broker.get_declared_actors()]
        sizes = [a.options.get("batch_size", BATCH_SIZE) for a in actors
                 if a.queue_name == queue_name and is_batch_actor(a)] or [BATCH_SIZE]
        waits = [a.options.get("batch_wait_ms", BATCH_WAIT_MS) for a in actors
                 if a.queue_name == queue_name and is_batch_actor(a)] or [BATCH_WAIT_MS]
        self.batch_size = max(1, min(sizes))
        self.batch_wait_s = max(waits) / 1000
        #: Deliveries in the last batch taken (``_linger``).
        self._last_size = 0
        #: Where a batch is handled while this thread pumps the connection (RabbitMQ).
        self._work: ThreadPoolExecutor | None = None

    def stop(self) -> None:
        self.running = False

    def run(self) -> None:
        while self.running:
            delays = None
            try:
                self.consumer = self.broker.consume(self.queue_name, prefetch=2 * self.batch_size,
                                                    timeout=self.idle_timeout_ms)
                delays = self._start_delay_consumer()
                while self.running:
                    batch = self.take()
                    if batch:
                        self._handle_pumping(batch)
            except BrokerConnectionError as e:
                log.warning("Batch consumer of %s lost its broker connection: %s",
                            self.queue_name, e)
            except Exception:
                log.critical("Batch consumer of %s failed.", self.queue_name, exc_info=True)
            finally:
                if delays is not None:
                    delays.stop()
                    delays.join(timeout=10)
                    with contextlib.suppress(Exception):
                        delays.close()
                    consumers = getattr(self.worker, "consumers", None)
                    if consumers is not None and consumers.get(delays.queue_name) is delays:
                        del consumers[delays.queue_name]
                self._close()
            if self.running:
                time.sleep(RESTART_DELAY_S)
        if self._work is not None:
            self._work.shutdown(wait=True)
            self._work = None

    def _handle_pumping(self, batch: list[Any]) -> None:
        """``handle(batch)``, with the consumer's connection kept alive meanwhile.

        pika's ``BlockingConnection`` does no I/O between calls into it: while this thread
        handled a batch, nothing answered RabbitMQ's heartbeats, and a batch that took
        longer than the heartbeat timeout (a batch of legacy writes at load ~25 in the
        full-size chaos run: 80 s) cost the connection. Every delivery not yet acked then
        came back and was taken, applied and dropped again: a queue that never drained.
        So on a consumer that can ``pump`` (RabbitMQ) the batch is handled on this
        consumer's work thread while this thread, which owns the connection, pumps it;
        acks and nacks reach it through ``add_callback_threadsafe`` as before. The embedded
        broker has no connection to keep: it handles the batch here.
        """
        pump = getattr(self.consumer, "pump", None)
        if pump is None:
            self.handle(batch)
            return
        if self._work is None:
            self._work = ThreadPoolExecutor(max_workers=1,
                                            thread_name_prefix=f"{self.name}-work")
        done = self._work.submit(self.handle, batch)
        lost: BrokerConnectionError | None = None
        while True:
            finished = bool(futures.wait([done], timeout=PUMP_EVERY_S).done)
            if lost is None:  # once more when finished: the batch's acks go now
                try:
                    pump()
                except BrokerConnectionError as e:
                    lost = e  # the handler may still be at work: wait for it first
            if finished:
                break
        done.result()
        if lost is not None:
            raise lost

    def _start_delay_consumer(self):
        # RabbitMQ keeps retries in <queue>.DQ until their eta; dramatiq's own consumer
        # thread moves them back to the work queue (the embedded broker needs none).
        delay_queue = dq_name(self.queue_name)
        if delay_queue not in getattr(self.broker, "get_declared_delay_queues", set)():
            return None
        from dramatiq.worker import ConsumerThread

        thread = ConsumerThread(broker=self.broker, queue_name=delay_queue, prefetch=1000,
                                work_queue=PriorityQueue(), worker_timeout=self.idle_timeout_ms)
        consumers = getattr(self.worker, "consumers", None)
        if consumers is not None and delay_queue not in consumers:
            # ``Worker.join`` waits for its consumers' delay queues: a retry waiting for its
            # eta here is work in progress too (the worker never consumes this queue).
            consumers[delay_queue] = thread
        thread.start()
        return thread

    def _close(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):  # a broken connection cannot close cleanly
                consumer.requeue([])
                consumer.close()

    # -- one batch ---------------------------------------------------------------------

    def take(self) -> list[Any]:
        """Up to ``batch_size`` deliveries: the first within the idle timeout, then what
        is buffered or arrives within ``batch_wait_s``."""
        first = next(self.consumer)
        if first is None:
            return []
        batch = [first]
        traced = [time.time()] if stages.enabled() else None
        poll = getattr(self.consumer, "poll", None)
        if poll is not None and self._linger(batch, poll, traced):
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.batch_size:
                message = poll(max(0.0, deadline - time.monotonic()))
                if message is None:
                    break
                batch.append(message)
                if traced is not None:
                    traced.append(time.time())
        if traced is not None:
            stages.mark_each("received", zip(traced, map(stages.message_key, batch),
                                             strict=True))
            stages.mark("batch_start", map(stages.message_key, batch))
        self._last_size = len(batch)
        return batch

    def _linger(self, batch: list[Any], poll, traced: list[float] | None) -> bool:
        """Whether to wait ``batch_wait_s`` for more deliveries after the first: only when
        the queue is busy (another delivery is already buffered, or the last batch held
        more than one).  A lone change on an idle queue goes at once instead of waiting
        for company that is not coming; a burst still fills its batches (while one is
        handled the next deliveries buffer, and the next take finds them)."""
        buffered = poll(0.0)
        if buffered is None:
            return self._last_size > 1
        batch.append(buffered)
        if traced is not None:
            traced.append(time.time())
        return True

    def handle(self, messages: Sequence[Any]) -> None:
        """Apply ``messages``, then settle every one of them."""
        self._track(len(messages))
        try:
            BATCHED.labels(queue=self.queue_name).inc(len(messages))
            groups: dict[str, list[Any]] = {}
            for message in messages:
                groups.setdefault(message.actor_name, []).append(message)
            committed: list[Any] = []
            for actor_name, group in groups.items():
                if not self.running:
                    self._hand_back(group)  # stopping: not started, so given back
                    continue
                try:
                    actor = self.broker.get_actor(actor_name)
                except ActorNotFound:
                    actor = None
                # A delivery that failed before goes alone at once: a poisoned message then
                # costs its batch one attempt in all, not one per retry.
                retried = [m for m in group if int(m.options.get("retries", 0)) > 0]
                fresh = [m for m in group if int(m.options.get("retries", 0)) == 0]
                alone = self._batch(actor, fresh) if actor is not None and \
                    is_batch_actor(actor) and fresh else None
                if alone is None:
                    alone = group
                else:
                    committed += [m for m in fresh if not any(m is a for a in alone)]
                    alone = retried + alone
                for n, message in enumerate(alone):  # settled one by one, before the ack
                    if not self.running:
                        # Stopping: what is left goes back to its queue unapplied (a
                        # graceful stop must not wait for up to a batch of messages one
                        # at a time, each with its own retries).
                        self._hand_back(alone[n:])
                        break
                    self.process_one(message)
            if committed:
                self._committed(committed)
                self._ack_all(committed)
                if stages.enabled():
                    stages.mark("acked", map(stages.message_key, committed))
        finally:
            self._track(-len(messages))

    def _batch(self, actor, messages: Sequence[Any]) -> list[Any] | None:
        """The messages left to the per-message path once the group's claims and
        effects committed (``None``: the batch failed, every message goes alone).

        A handler that returns a sequence of positions (into the list it was given)
        leaves those messages to the per-message path: their effects are its own
        business (they were not applied by the batch), so they get its decisions and
        failure classes while the others are acked with the batch."""
        handler = actor.options[BATCH_OPTION]
        consumer = actor.options.get(inbox.INBOX_OPTION)
        budget = self._budget()
        try:
            with retry_budget.scope(budget):
                return self._apply(handler, consumer, messages)
        except Exception as e:
            BATCHES.labels(queue=self.queue_name, outcome="split").inc()
            log.info("A batch of %d messages on %s failed (%s: %s); handling each alone.",
                     len(messages), self.queue_name, type(e).__name__, e)
            if budget is not None and budget.failures:
                # Each message was in the requests that failed: its own path goes on from
                # what the batch spent (``options`` travels with its retries).
                for message in messages:
                    message.options["failures"] = \
                        int(message.options.get("failures", 0)) + budget.failures
            return None

    def _budget(self) -> retry_budget.Budget | None:
        """The batch's retry budget: the failure middleware's, with one delivery's
        deadline, so in-call retries of a batch are bounded like a message's."""
        from bus.retry import FailureClasses  # bus.retry imports this package's parent

        for middleware in self.broker.middleware:
            if isinstance(middleware, FailureClasses):
                deadline = time.monotonic() + middleware.delivery_s \
                    if middleware.delivery_s else None
                return retry_budget.Budget(limit=middleware.budget, deadline=deadline)
        return None

    def _apply(self, handler, consumer, messages: Sequence[Any]) -> list[Any]:
        """Claims (with an inbox), the handler and the commit; raises when the batch fails."""
        if consumer and self.engine is not None:
            with self.engine.connect() as conn, conn.begin():
                ids = [inbox.message_id_of(m) for m in messages]
                fresh = inbox.claim_many(conn, consumer, ids)
                todo = []
                for message, message_id in zip(messages, ids, strict=True):
                    if message_id in fresh:
                        fresh.discard(message_id)  # a second copy in the batch has none
                        todo.append(message)
                if len(todo) < len(messages):
                    log.debug("%d of %d messages on %s were already applied by %s.",
                              len(messages) - len(todo), len(messages), self.queue_name,
                              consumer)
                handed: Sequence[Any] = todo
                left = None
                if todo:
                    with inbox.bound(conn):
                        left = handler([_arg(m) for m in todo])
                if left:
                    # Their claims would commit with the batch and the per-message
                    # path would then skip them as applied.
                    raise RuntimeError("a batch handler with an inbox cannot leave "
                                       "messages to the per-message path")
        else:
            handed = messages
            left = handler([_arg(m) for m in messages])
        BATCHES.labels(queue=self.queue_name, outcome="committed").inc()
        return [handed[i] for i in left] if left else []

    def process_one(self, message) -> None:
        """One message through dramatiq's middleware pipeline, as its worker threads do."""
        broker = self.broker
        actor = None
        try:
            broker.emit_before("process_message", message)
            result = None
            if not message.failed:
                actor = broker.get_actor(message.actor_name)
                result = actor(*message.args, **message.kwargs)
            broker.emit_after("process_message", message, result=result)
        except SkipMessage as e:
            if message.failed:
                message.stuff_exception(e)
            worker_log.warning("Message %s was skipped.", message)
            broker.emit_after("skip_message", message)
        except BaseException as e:
            message.stuff_exception(e)
            throws = message.options.get("throws") or (actor and actor.options.get("throws"))
            if not isinstance(e, Retry) and not (throws and isinstance(e, throws)):
                worker_log.error("Failed to process message %s with unhandled exception.",
                                 message, exc_info=True)
            if isinstance(e, ActorNotFound):
                message.fail()
            broker.emit_after("process_message", message, exception=e)
        finally:
            self._settle(message)
            message.clear_exception()

    def _hand_back(self, messages: Sequence[Any]) -> None:
        """Give deliveries back unapplied, each settled (nacked for redelivery), so that
        the batch's ``basic_ack(multiple=True)`` that follows cannot ack them too."""
        log.info("Stopping: %d messages of a batch on %s go back to their queue.",
                 len(messages), self.queue_name)
        for message in messages:
            request_redelivery(message)
            with contextlib.suppress(Exception):  # a broken connection gives it back anyway
                self.consumer.nack(message)

    def _settle(self, message) -> None:
        verb = "nack" if message.failed else "ack"
        self.broker.emit_before(verb, message)
        getattr(self.consumer, verb)(message)
        self.broker.emit_after(verb, message)

    def _committed(self, messages: Sequence[Any]) -> None:
        """Tell middleware that settles messages (``bus.ledger.SettleLedger``) that these
        messages' effects are committed: the per-message path's ``after_process_message``
        does not run for them."""
        for middleware in self.broker.middleware:
            hook = getattr(middleware, "after_batch_commit", None)
            if hook is not None:
                hook(self.broker, messages)

    def _ack_all(self, messages: Sequence[Any]) -> None:
        for message in messages:
            self.broker.emit_before("ack", message)
        ack_many = getattr(self.consumer, "ack_many", None)
        if ack_many is not None:
            ack_many(messages)
        else:
            for message in messages:
                self.consumer.ack(message)
        for message in messages:
            self.broker.emit_after("ack", message)

    def _track(self, n: int) -> None:
        q = self.in_flight
        if q is None:
            return
        if n > 0:
            with q.mutex:
                q.unfinished_tasks += n
        else:
            for _ in range(-n):
                q.task_done()


def _consumers(broker, queue_name: str) -> int:
    counts = [broker.get_actor(name).options.get("batch_consumers", BATCH_CONSUMERS)
              for name in broker.get_declared_actors()
              if broker.get_actor(name).queue_name == queue_name]
    return max(1, max(counts, default=BATCH_CONSUMERS))


def _arg(message) -> Any:
    return message.args[0] if message.args else None
