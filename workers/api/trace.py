"""Inquiry calls (``GET``) kept for ``coexist trace``, bounded so a busy portal cannot
grow the state database without limit.

One ``api_inquiry`` row per inquiry and per record it is about (credit: the customer;
price: the customer and the product; availability: the product; order: the order),
saying who asked (consumer, role), what (path), the answer's status, which system
answered each domain under which flag version (``meta.answered_by``), and whether it came
from the cache or was stale.  Answers served by the warm path (``workers.api.edge``) are
recorded the same way, marked cached.

Bounds, all per API process:

* ``sample`` (``COEXIST_API_TRACE_SAMPLE``, default ``TRACE_SAMPLE``): share of inquiries
  considered at all;
* ``max_per_s`` (``COEXIST_API_TRACE_MAX_PER_S``, default ``TRACE_MAX_PER_S``): a token
  bucket on recording, so at most that many inquiries per second are kept whatever the
  request rate; 0 switches the trace off;
* ``retention_h`` (``COEXIST_API_TRACE_RETENTION_H``, default ``TRACE_RETENTION_H``): rows
  older are deleted by the writer every ``PURGE_S``.

So the table holds at most ``max_per_s * 3600 * retention_h`` inquiries per API process
(10/s for 24 h: 864,000).  Inquiries not kept (sampled out, over the cap, or the
in-memory queue full) are counted in ``coexist_api_inquiries_untraced_total{reason}``;
the trace is a sample, never the access log.  Rows are written by one background thread
in batches every ``FLUSH_S``: the request never waits for the state database.  A
process killed loses at most the last ``FLUSH_S`` of samples.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Integer,
    String,
    Text,
    delete,
    insert,
)
from sqlmodel import Field

from workers.api.counting import LoopCounter
from workers.db import StateTable
from workers.ratelimit import LocalTokenBucket

log = logging.getLogger(__name__)

#: Default share of inquiries considered for the trace.
TRACE_SAMPLE = 1.0
#: Default most inquiries recorded per second per API process.
TRACE_MAX_PER_S = 10.0
#: Default hours an inquiry row is kept.
TRACE_RETENTION_H = 24.0
#: Seconds between two batched writes of the recorded inquiries.
FLUSH_S = 1.0
#: Seconds between two purges of rows past the retention.
PURGE_S = 300.0
#: Inquiries held in memory waiting for the writer (more are counted, not kept).
QUEUE_MAX = 10_000

UNTRACED = LoopCounter("coexist_api_inquiries_untraced_total",
                   "Inquiries not kept in the inquiry trace (sampled out, over the per-second "
                   "cap, queue full, or the write failed)", ["reason"])
_SAMPLED_OUT = UNTRACED.labels("sampled_out")
_OVER_CAP = UNTRACED.labels("over_cap")
_QUEUE_FULL = UNTRACED.labels("queue_full")


class ApiInquiry(StateTable, table=True):
    __tablename__ = "api_inquiry"

    id: int | None = Field(default=None, sa_column=Column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True))
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False, index=True))
    domain: str = Field(sa_column=Column(String(20), nullable=False))
    object_key: str = Field(sa_column=Column(String(80), nullable=False, index=True))
    consumer: str = Field(sa_column=Column(String(200), nullable=False))
    role: str = Field(sa_column=Column(String(20), nullable=False))
    path: str = Field(sa_column=Column(String(400), nullable=False))
    status: int = Field(sa_column=Column(Integer, nullable=False))
    #: ``meta.answered_by`` of the answer: [{domain, system, mode, pinned, flag_version}].
    answered_by: str = Field(sa_column=Column(Text, nullable=False))
    cached: bool = Field(sa_column=Column(Boolean, nullable=False))
    stale: bool = Field(sa_column=Column(Boolean, nullable=False))
    age_s: float = Field(sa_column=Column(Float, nullable=False))
    correlation_id: str = Field(sa_column=Column(String(128), nullable=False, index=True))


_T = ApiInquiry.__table__
_ROUTES = (
    (re.compile(r"^/v1/customers/([^/]+)/credit$"), lambda m, q: [("customer", m[1])]),
    (re.compile(r"^/v1/orders/([^/]+)$"), lambda m, q: [("order", m[1])]),
    (re.compile(r"^/v1/prices$"), lambda m, q: [("customer", q.get("customer")),
                                                ("product", q.get("sku"))]),
    (re.compile(r"^/v1/availability$"), lambda m, q: [
        ("product", q.get("sku")),
        ("inventory", f"{q['warehouse']}:{q.get('sku')}" if q.get("warehouse") else None)]),
)


def targets_of(path: str, query_string: bytes) -> list[tuple[str, str]]:
    """The records an inquiry is about, from its path and query."""
    for pattern, pick in _ROUTES:
        m = pattern.match(path)
        if m:
            q = {k: v[0] for k, v in parse_qs(query_string.decode("latin-1")).items()}
            return [(d, k[:80]) for d, k in pick(m, q) if k]
    return []


class InquiryTrace:
    """Samples inquiries on the event loop; one thread writes them in batches."""

    def __init__(self, engine: Engine, *, sample: float = TRACE_SAMPLE,
                 max_per_s: float = TRACE_MAX_PER_S, retention_h: float = TRACE_RETENTION_H,
                 now=lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.sample = sample
        self.retention = timedelta(hours=retention_h)
        self.now = now
        self._bucket = LocalTokenBucket(max_per_s, max(max_per_s, 1.0)) if max_per_s else None
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._purged_at = 0.0
        #: ``time.monotonic()`` before which the cap's bucket is known to be empty: an
        #: inquiry then is counted over the cap without drawing (at a busy portal nearly
        #: every inquiry is over the cap, and the draw was most of the trace's cost).
        self._closed_until = 0.0

    @property
    def enabled(self) -> bool:
        return self._bucket is not None and self.sample > 0

    def record(self, consumer, scope, status: int, meta: dict[str, Any] | None,
               correlation_id: str) -> None:
        """Keep this inquiry if the sample and the cap allow; never blocks on the DB."""
        if self.admit():
            self.keep(consumer, scope, status, meta, correlation_id)

    def admit(self) -> bool:
        """Whether the next inquiry is to be kept (the sample, the cap, the queue's room);
        one not admitted is counted by reason.  ``keep`` it when true."""
        sample = self.sample
        if self._bucket is None or sample <= 0:  # not enabled
            return False
        if sample < 1 and random.random() >= sample:
            _SAMPLED_OUT.hit()
            return False
        assert self._bucket is not None
        now = time.monotonic()
        if now < self._closed_until:
            _OVER_CAP.hit()
            return False
        wait_s = self._bucket.try_acquire()
        if wait_s > 0:
            self._closed_until = now + wait_s
            _OVER_CAP.hit()
            return False
        if len(self._queue) >= QUEUE_MAX:
            _QUEUE_FULL.hit()
            return False
        return True

    def keep(self, consumer, scope, status: int, meta: dict[str, Any] | None,
             correlation_id: str) -> None:
        """Queue an admitted inquiry for the trace's writer thread."""
        query = scope.get("query_string", b"")
        targets = targets_of(scope["path"], query)
        if not targets:
            return
        meta = meta or {}
        path = scope["path"] + (f"?{query.decode('latin-1')}" if query else "")
        at = self.now()
        answered = json.dumps([{k: s.get(k) for k in ("domain", "system", "mode", "pinned",
                                                      "flag_version")}
                               for s in meta.get("answered_by", ())], separators=(",", ":"))
        for domain, key in targets:
            self._queue.append({
                "at": at, "domain": domain, "object_key": key, "consumer": consumer.name,
                "role": str(consumer.role), "path": path[:400], "status": status,
                "answered_by": answered, "cached": bool(meta.get("cached", False)),
                "stale": bool(meta.get("stale", False)),
                "age_s": float(meta.get("age_s", 0.0)), "correlation_id": correlation_id})
        self._start()

    def _start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="inquiry-trace",
                                                    daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write what was recorded (and purge past the retention when due); rows written."""
        with self._lock:
            rows = []
            while self._queue:
                rows.append(self._queue.popleft())
            purge = time.monotonic() - self._purged_at >= PURGE_S
            if not rows and not purge:
                return 0
            if purge:
                self._purged_at = time.monotonic()
            try:
                with self.engine.begin() as conn:
                    if rows:
                        conn.execute(insert(_T), rows)
                    if purge:
                        conn.execute(delete(_T).where(_T.c.at < self.now() - self.retention))
            except Exception as exc:  # noqa: BLE001 - the trace must never break the API
                UNTRACED.labels("write_failed").inc(len(rows))
                log.warning("inquiry trace: %d row(s) not written: %s", len(rows),
                            str(exc).splitlines()[0])
                return 0
            return len(rows)

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()
