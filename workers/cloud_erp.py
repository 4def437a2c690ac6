"""The cloud ERP adapter: ``coexistence.ports.Erp`` + ``ChangeFeed`` over HTTP (httpx).

Failures are classified before they leave this module:

* **technical** (timeouts, connection errors, a connection cut mid-response,
  5xx, 429) are retried here with capped, jittered exponential backoff that
  waits at least the server's ``Retry-After``; when the attempts run out a
  ``CloudTechnicalError`` goes to the bus's retry policy.  Inside a message the
  retries also spend from its cross-layer budget (``bus.budget``): every failed
  attempt counts, and no retry starts once the budget is spent or its wait would
  end after the delivery's deadline;
* **business** (400, 404, 409, 412, 422 and other 4xx) raise a
  ``CloudBusinessError`` carrying the server's message and field paths.

Exactly once: every write carries an ``Idempotency-Key`` derived from the
caller's key (the message id) and the precondition it was built on (the ETag,
or "create"), so a retry of a write whose answer was lost is replayed by the
server, never applied twice; a redelivered message re-reads the record and
finds it ``Stale``.

Version check: coexist stamps ``coexistSourceVersion`` on its writes (and
``X-Coexist-Source-Version`` on deletes, kept in the tombstone).  ``upsert``
reads the record (tombstones included) with its ETag, answers ``Stale`` when
the stored version is not older, else PATCHes with ``If-Match`` or POSTs when
absent.  A lost race (412, or 409 on create) re-reads and decides again.

Revision check: ``get_current`` answers the record's ETag and ``lastModifiedBy``
(the client id of its last write) from the same small read; a write with
``if_revision`` is sent with ``If-Match`` on that ETag (or as a create when it
was absent) and, when the record changed meanwhile (412 / 409), answers
``Changed`` with the fresh state instead of deciding by itself, so the caller
(``workers.router.handlers.apply_write``) decides again.  The read is kept per
thread, so the write that follows does not read again.

A client-side rate limiter (``workers.ratelimit``, shared through Redis by the
whole fleet when configured) keeps the workers under the cloud's limit.  The
bearer token comes from ``Settings`` and is never logged.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import quote

import httpx

from bus import budget as retry_budget
from bus.errors import BusinessError, TechnicalError
from coexistence.canonical import CanonicalRecord
from coexistence.errors import CoexistError, TranslationError
from coexistence.ports import (
    ABSENT,
    COEXIST_WRITER,
    Applied,
    Change,
    Changed,
    Current,
    Stale,
    WriteOp,
    WriteResult,
)
from coexistence.translate.cloud import (
    RESOURCES,
    canonical_from_json,
    from_canonical,
    to_json_bytes,
    to_json_dict,
)
from coexistence.writes import applies
from workers.ratelimit import RateLimiter, Unlimited, make_rate_limiter

log = logging.getLogger("coexist.cloud_erp")

#: Per-request timeout (connect, read, write, pool), in seconds.
CLOUD_TIMEOUT_S = 10.0
#: Attempts per request before a technical failure is raised (1 = no retry).
CLOUD_RETRY_ATTEMPTS = 6
#: First backoff step, in seconds; doubles per attempt (full jitter).
CLOUD_RETRY_BASE_BACKOFF_S = 0.05
#: Longest wait between two attempts, in seconds, even when Retry-After asks for more.
CLOUD_RETRY_MAX_BACKOFF_S = 5.0
#: Re-read-and-decide rounds when a write loses a race (412 / 409) before giving up.
CLOUD_CONFLICT_ROUNDS = 5
#: Operations per $batch request (the simulator's and Business Central's limit).
CLOUD_BATCH_MAX = 200
#: Keep-alive connections kept in the pool.
CLOUD_POOL_CONNECTIONS = 20

#: What an upsert reads of the current record: tombstones included, three fields only.
_CURRENT_SELECT = "id,coexistSourceVersion,lastModifiedBy,lastModifiedDateTime"
_CURRENT_QUERY = {"includeDeleted": "true", "$select": _CURRENT_SELECT}
_CURRENT_QS = f"?includeDeleted=true&$select={_CURRENT_SELECT}"
#: Success answers of a write (204 = ``Prefer: return=minimal`` honoured).
_WRITTEN = (200, 201, 204)

_DOMAINS_BY_SET = {entity_set: domain for domain, entity_set in RESOURCES.items()}
_BUSINESS_CODES = {400, 404, 409, 412, 422}


class CloudBusinessError(BusinessError):
    """The cloud refused the request for a reason retrying cannot fix."""

    def __init__(self, status: int, message: str, code: str = "", targets: Sequence[str] = ()):
        self.status, self.code, self.server_message = status, code, message
        self.targets = tuple(targets)
        where = f" at {', '.join(self.targets)}" if self.targets else ""
        super().__init__(f"cloud ERP answered {status} {code}: {message}{where}")


class CloudTechnicalError(TechnicalError):
    """The cloud could not be reached or kept failing; the bus retries later."""


@dataclass(frozen=True, slots=True)
class _Current:
    """What an upsert needs to know of the stored record."""

    id: str
    etag: str
    version: int
    deleted: bool
    #: ``lastModifiedBy``: the client id that made this state (None: not read).
    writer: str | None = None
    modified: str | None = None

    @classmethod
    def of(cls, current: Current) -> _Current:
        """Back from the port's ``Current`` (a caller's read) to what a write needs."""
        modified = current.at.isoformat() if current.at is not None else None
        return cls(current.target_id or "", current.revision, current.version,
                   not current.exists, current.writer, modified)

    def public(self) -> Current:
        at = None
        if self.modified:
            try:
                at = datetime.fromisoformat(self.modified.replace("Z", "+00:00"))
            except ValueError:
                at = None
        return Current(self.etag, self.writer or "", self.version, not self.deleted, at,
                       self.id)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One write of a batch: its place, what it writes (``record`` None: a delete) and
    the state it is conditioned on."""

    index: int
    domain: str
    key: str
    record: CanonicalRecord | None
    version: int
    idempotency_key: str
    current: _Current | None
    repair: bool


class CloudErp:
    """``Erp`` and ``ChangeFeed`` for the cloud ERP (the simulator or a real one).

    One instance per process, shared by its worker threads: the pooled
    ``httpx.Client`` and the rate limiters are thread-safe and every call keeps
    its retry state on its own stack (``retries`` is only an approximate metric).
    """

    system = "cloud"

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        client_id: str = COEXIST_WRITER,
        limiter: RateLimiter | None = None,
        timeout_s: float = CLOUD_TIMEOUT_S,
        attempts: int = CLOUD_RETRY_ATTEMPTS,
        base_backoff_s: float = CLOUD_RETRY_BASE_BACKOFF_S,
        max_backoff_s: float = CLOUD_RETRY_MAX_BACKOFF_S,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"X-Client-Id": client_id, "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        limits = httpx.Limits(
            max_connections=CLOUD_POOL_CONNECTIONS,
            max_keepalive_connections=CLOUD_POOL_CONNECTIONS,
        )
        if transport is None and base_url.startswith("http://"):
            # Plain HTTP (the simulator on loopback): skip loading the CA bundle,
            # which costs a quarter of a second per client.
            transport = httpx.HTTPTransport(verify=False, limits=limits)
        self.http = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=timeout_s,
            transport=transport,
            limits=limits,
        )
        self.limiter = limiter or Unlimited()
        self.attempts = max(1, attempts)
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.sleep = sleep
        #: Requests retried after a technical failure (a metric for tests and ops).
        self.retries = 0
        #: Per thread: the state of the record ``get`` just read, for the next upsert.
        self._read_ahead = threading.local()

    @classmethod
    def from_settings(cls, settings, **kwargs) -> CloudErp:
        """The adapter as configured: URL, token and rate limit (``COEXIST_CLOUD_RATE_PER_S``
        / ``COEXIST_CLOUD_BURST``, Redis-shared if configured) from ``Settings``."""
        if not settings.cloud_url:
            raise ValueError("COEXIST_CLOUD_URL is not set: no cloud ERP to talk to")
        kwargs.setdefault("limiter", make_rate_limiter(
            "cloud", settings.cloud_rate_per_s, settings.cloud_burst or None,
            redis_url=settings.redis_url, prefix=settings.redis_prefix))
        return cls(settings.cloud_url, token=settings.cloud_token_value(), **kwargs)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> CloudErp:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ Erp: reads

    def get(self, domain: str, key: str) -> CanonicalRecord | None:
        response = self._request("GET", _by_number(domain, key), ok=(200, 404))
        if response.status_code == 404:
            # Absent (or a tombstone): the upsert that may follow reads the tombstone itself.
            self._read_ahead.value = None
            return None
        doc = response.json()
        writer = doc.get("lastModifiedBy")
        # A writer that merges over the current record (field ownership) upserts right
        # after reading it: keep what the upsert needs, so it can skip its own read.  An
        # etag gone stale meanwhile is answered 412 and the upsert reads again.  (A 404
        # is not kept: a tombstone's version still has to be read with includeDeleted.)
        held = _current_from({"status": 200, "body": doc})
        if held is not None:
            held = _Current(held.id, held.etag, held.version, held.deleted, writer,
                            doc.get("lastModifiedDateTime"))
        self._read_ahead.value = (domain, key, held)
        return canonical_from_json(domain, doc)

    def get_current(self, domain: str, key: str) -> Current | None:
        """ETag, ``lastModifiedBy`` and coexist's stamp of the record (tombstones included);
        the write that follows on this thread reuses the read."""
        ahead = self._take_read_ahead(domain, key)
        current = ahead if ahead is not None and ahead.writer is not None else \
            self._current(domain, key)
        self._read_ahead.value = (domain, key, current) if current is not None else None
        return current.public() if current is not None else None

    def _take_read_ahead(self, domain: str, key: str) -> _Current | None:
        held = getattr(self._read_ahead, "value", None)
        self._read_ahead.value = None
        if held is not None and held[0] == domain and held[1] == key:
            return held[2]
        return None

    def stream(self, domain: str) -> Iterator[CanonicalRecord]:
        """Records from ``/export`` (sorted by number = canonical key); a stream cut
        mid-way resumes behind the last record yielded, within the retry budget."""
        path = f"/export/{_entity_set(domain)}"
        after, failures = "", 0
        while True:
            try:
                self.limiter.acquire()
                with self.http.stream("GET", path, params={"after": after}) as response:
                    if response.status_code != 200:
                        response.read()
                        if _is_technical(response.status_code):
                            raise _StreamRetry(response)
                        raise _business(response)
                    for line in response.iter_lines():
                        if line:
                            record = canonical_from_json(domain, line)
                            after = record.key
                            yield record
                    return
            except (httpx.TransportError, _StreamRetry) as exc:
                failures += 1
                budget = retry_budget.current()
                if budget is not None:
                    budget.failed()
                wait = self._backoff(failures - 1, None)
                if failures >= self.attempts or (budget is not None
                                                 and not budget.may_retry(wait)):
                    raise retry_budget.counted(CloudTechnicalError(
                        f"export of {domain} failed {failures} times: {exc}")) from None
                self.retries += 1
                self.sleep(wait)

    def read(self, after: int, limit: int) -> list[Change]:
        """``ChangeFeed``: entries after ``after`` in cursor order."""
        body = self._request("GET", "/changes", params={"after": after, "limit": limit}).json()
        changes = []
        for entry in body["value"]:
            domain = _DOMAINS_BY_SET.get(entry["entitySet"])
            if domain is None:
                # Skipping would stall a reader whose page held only such entries.
                raise TranslationError("change", str(entry.get("cursor")), "entitySet",
                                       entry["entitySet"], "not a resource coexist syncs")
            changes.append(Change(
                cursor=entry["cursor"], domain=domain, key=entry["number"], op=entry["op"],
                writer=entry["clientId"], at=datetime.fromisoformat(entry["at"]),
                version=entry["version"],
            ))
        return changes

    # ------------------------------------------------------------------ Erp: writes

    def upsert(
        self,
        record: CanonicalRecord,
        *,
        source_version: int,
        idempotency_key: str,
        writer: str = COEXIST_WRITER,
        repair: bool = False,
        if_revision: str | None = None,
    ) -> WriteResult:
        domain, key = record.domain, record.key
        body = json.dumps(_document(record, source_version), separators=(",", ":")).encode()
        ahead = self._take_read_ahead(domain, key)
        for _ in range(CLOUD_CONFLICT_ROUNDS):
            current, ahead = ahead or self._current(domain, key), None
            changed = _changed(domain, key, current, if_revision)
            if changed is not None:
                return changed
            if current is not None and not applies(source_version, current.version, repair):
                return Stale(domain, key, source_version, current.version)
            response = self._write_upsert(domain, key, current, body, idempotency_key, writer)
            if response.status_code in _WRITTEN:
                return _applied(domain, key, source_version, response, current)
            if response.status_code not in (409, 412, 404):
                raise _business(response)
            if if_revision is not None:
                # Someone wrote between the caller's read and this write: the caller decides.
                fresh = self._current(domain, key)
                return Changed(domain, key, if_revision,
                               fresh.public() if fresh is not None else None)
            log.info("cloud %s %s changed under us (%s); re-reading",
                     domain, key, response.status_code)
        raise CloudTechnicalError(
            f"{domain} {key}: lost {CLOUD_CONFLICT_ROUNDS} write races in a row; retry later")

    def create_numbered(self, record: CanonicalRecord, *, idempotency_key: str,
                        writer: str = COEXIST_WRITER) -> str:
        """Create ``record`` (a customer; its key is ignored) without a number: the cloud
        assigns the next of its sequence; returns the key.  The same request again with
        ``idempotency_key`` replays the first answer (the same number, nothing created); a
        different record under the key is the cloud's 422 ``IdempotencyKeyReused``."""
        domain = record.domain
        if domain != "customer":
            raise CoexistError(f"the cloud ERP numbers customers only, not {domain}")
        doc = _document(record, 0)
        doc.pop("number", None)
        response = self._request(
            "POST", f"/{_entity_set(domain)}", ok=(201,),
            content=json.dumps(doc, separators=(",", ":")).encode(),
            headers={"Content-Type": "application/json", "X-Client-Id": writer,
                     "Idempotency-Key": f"{idempotency_key}:create-numbered"})
        number = response.json().get("number")
        if not number:
            raise CloudTechnicalError(f"the cloud created a {domain} without a number")
        return str(number)

    def delete(
        self,
        domain: str,
        key: str,
        *,
        source_version: int,
        idempotency_key: str,
        writer: str = COEXIST_WRITER,
        repair: bool = False,
        if_revision: str | None = None,
    ) -> WriteResult:
        ahead = self._take_read_ahead(domain, key)
        for _ in range(CLOUD_CONFLICT_ROUNDS):
            current, ahead = ahead or self._current(domain, key), None
            changed = _changed(domain, key, current, if_revision)
            if changed is not None:
                return changed
            if current is None:
                return Applied(domain, key, source_version)
            if not applies(source_version, current.version, repair):
                return Stale(domain, key, source_version, current.version)
            if current.deleted:
                return Applied(domain, key, source_version)
            response = self._request(
                "DELETE", f"/{_entity_set(domain)}({current.id})",
                headers={
                    "If-Match": current.etag,
                    "X-Coexist-Source-Version": str(source_version),
                    "Idempotency-Key": f"{idempotency_key}:{current.etag}",
                    "X-Client-Id": writer,
                },
                ok=(204, 404, 412),
            )
            if response.status_code == 204:
                return _applied(domain, key, source_version, response, current)
            if if_revision is not None:
                fresh = self._current(domain, key)
                return Changed(domain, key, if_revision,
                               fresh.public() if fresh is not None else None)
        raise CloudTechnicalError(
            f"{domain} {key}: lost {CLOUD_CONFLICT_ROUNDS} delete races in a row; retry later")

    def upsert_many(
        self,
        items: Sequence[tuple[CanonicalRecord, int, str] | tuple[CanonicalRecord, int, str, str]],
        *,
        writer: str = COEXIST_WRITER,
        repair: bool = False,
        if_revision: str | None = None,
    ) -> list[WriteResult | CloudBusinessError]:
        """Upsert (record, source_version, idempotency_key[, if_revision]) items through
        ``$batch``, each with the checks of :meth:`upsert`.

        Reads the current states in one batch (ETag, version, writer; tombstones
        included) and writes the newer ones in a second, each ``If-Match`` on the ETag
        read.  ``if_revision`` (per item, else the keyword for all, e.g. ``ABSENT``):
        apply only if the record is still at that revision, else ``Changed``.  A write
        that loses a race (412 / 409: someone wrote between the read and the write) is
        never re-sent blindly: it answers ``Changed`` with the fresh state, so the
        caller decides on it (the router's TargetChanged path).  ``repair`` also
        re-applies an equal version.  The result for each item is ``Applied``,
        ``Stale``, ``Changed`` or the ``CloudBusinessError`` the cloud answered for it
        (the others are still applied).  At most ``CLOUD_BATCH_MAX`` items.
        """
        if len(items) > CLOUD_BATCH_MAX:
            raise ValueError(f"{len(items)} items; at most {CLOUD_BATCH_MAX} per batch")
        reads = [
            {"id": str(i), "method": "GET",
             "url": _by_number(item[0].domain, item[0].key).lstrip("/") + _CURRENT_QS}
            for i, item in enumerate(items)
        ]
        currents = [_current_from(a) for a in self._batch(reads)] if reads else []
        results: list[WriteResult | CloudBusinessError | None] = [None] * len(items)
        entries: list[_Entry] = []
        for i, (item, current) in enumerate(zip(items, currents, strict=True)):
            record, version, idem = item[0], item[1], item[2]
            condition = item[3] if len(item) > 3 else if_revision  # type: ignore[misc]
            changed = _changed(record.domain, record.key, current, condition)
            if changed is not None:
                results[i] = changed
                continue
            entries.append(_Entry(i, record.domain, record.key, record, version, idem,
                                  current, repair))
        for entry, result in zip(entries, self._write_entries(entries, writer), strict=True):
            results[entry.index] = result
        return results  # type: ignore[return-value]

    def create_many(
        self,
        items: Sequence[tuple[CanonicalRecord, int, str]],
        *,
        writer: str = COEXIST_WRITER,
    ) -> list[WriteResult | CloudBusinessError]:
        """Create (record, source_version, idempotency_key) items the caller knows the
        cloud does not hold (a backfill into an empty cloud), in one ``$batch`` of
        POSTs with no read first.  Each POST is conditioned on the number being unused,
        tombstones included (``If-None-Match: *``), so a record created meanwhile (or
        created and deleted) is never overwritten or revived: it answers ``Changed``
        with the state read then, as a lost race of :meth:`upsert_many` does.  A cloud
        that ignores ``If-None-Match`` on a POST still refuses a number in use (409).
        The result for each item is ``Applied``, ``Changed`` or the cloud's
        ``CloudBusinessError``.  At most ``CLOUD_BATCH_MAX`` items.
        """
        if len(items) > CLOUD_BATCH_MAX:
            raise ValueError(f"{len(items)} items; at most {CLOUD_BATCH_MAX} per batch")
        entries = [_Entry(i, record.domain, record.key, record, version, idem, None, False)
                   for i, (record, version, idem) in enumerate(items)]
        return self._write_entries(entries, writer, absent=True)

    # ------------------------------------------------------------------ BatchErp

    def read_many(self, domain: str, keys: Sequence[str]
                  ) -> dict[str, tuple[CanonicalRecord | None, Current | None]]:
        """One tombstone-aware GET per record (whole documents, with ETag and
        ``lastModifiedBy``), ``CLOUD_BATCH_MAX`` per ``$batch``."""
        keys = list(dict.fromkeys(keys))
        out: dict[str, tuple[CanonicalRecord | None, Current | None]] = {}
        for start in range(0, len(keys), CLOUD_BATCH_MAX):
            chunk = keys[start:start + CLOUD_BATCH_MAX]
            reads = [{"id": str(n), "method": "GET",
                      "url": _by_number(domain, key).lstrip("/") + "?includeDeleted=true"}
                     for n, key in enumerate(chunk)]
            for key, answer in zip(chunk, self._batch(reads), strict=True):
                current = _current_from(answer)
                if current is None:
                    out[key] = (None, None)
                elif current.deleted:
                    out[key] = (None, current.public())
                else:
                    out[key] = (canonical_from_json(domain, answer["body"]), current.public())
        return out

    def write_many(self, ops: Sequence[WriteOp]) -> list[WriteResult | Exception]:
        """Conditioned writes through ``$batch`` (one request per writer and 200 ops):
        each op ``If-Match`` on the revision its caller read, so a person's edit made
        since is answered ``Changed`` (with the fresh state) and never overwritten."""
        results: list[WriteResult | Exception | None] = [None] * len(ops)
        by_writer: dict[str, list[_Entry]] = {}
        for i, op in enumerate(ops):
            held = _Current.of(op.current) if op.current is not None else None
            by_writer.setdefault(op.writer, []).append(
                _Entry(i, op.domain, op.key, op.record, op.source_version, op.idempotency_key,
                       held, op.repair))
        for writer, entries in by_writer.items():
            for entry, result in zip(entries, self._write_entries(entries, writer), strict=True):
                results[entry.index] = result
        return results  # type: ignore[return-value]

    def _write_entries(self, entries: Sequence[_Entry], writer: str, *, absent: bool = False
                       ) -> list[WriteResult | CloudBusinessError]:
        """Write ``entries`` (each conditioned on its ``current``) in ``$batch`` requests;
        lost races answer ``Changed`` with the state read again in one more batch.
        ``absent``: every entry is a create of a number not in use, not even by a
        tombstone (``If-None-Match: *``; ``create_many``)."""
        results: list[WriteResult | CloudBusinessError | None] = [None] * len(entries)
        pending: list[tuple[int, dict]] = []
        for n, e in enumerate(entries):
            current = e.current
            if current is not None and not applies(e.version, current.version, e.repair):
                results[n] = Stale(e.domain, e.key, e.version, current.version)
            elif e.record is None and (current is None or current.deleted):
                results[n] = Applied(e.domain, e.key, e.version)
            elif e.record is None:
                assert current is not None
                pending.append((n, {
                    "id": str(n), "method": "DELETE",
                    "url": f"{_entity_set(e.domain)}({current.id})",
                    "headers": {"If-Match": current.etag,
                                "X-Coexist-Source-Version": str(e.version),
                                "Idempotency-Key": f"{e.idempotency_key}:{current.etag}"}}))
            else:
                op = _write_op(str(n), e.domain, current,
                               _document_bytes(e.record, e.version), e.idempotency_key)
                if absent:
                    op["headers"]["If-None-Match"] = "*"
                pending.append((n, op))
        lost: list[int] = []
        headers = {"X-Client-Id": writer}
        for start in range(0, len(pending), CLOUD_BATCH_MAX):
            chunk = pending[start:start + CLOUD_BATCH_MAX]
            for (n, _op), answer in zip(chunk, self._batch([op for _, op in chunk], headers),
                                        strict=True):
                e, status = entries[n], answer["status"]
                if status in _WRITTEN:
                    results[n] = _applied_from(e.domain, e.key, e.version,
                                               answer.get("headers") or {}, e.current)
                elif status in (404, 409, 412):
                    lost.append(n)
                elif _is_technical(status):
                    raise CloudTechnicalError(
                        f"cloud ERP $batch: {e.domain} {e.key} answered {status}; retry later")
                else:
                    error = (answer.get("body") or {}).get("error", {})
                    results[n] = CloudBusinessError(
                        status, error.get("message", ""), error.get("code", ""),
                        [d.get("target", "") for d in error.get("details", [])])
        if lost:
            fresh = self._currents([(entries[n].domain, entries[n].key) for n in lost])
            for n, now in zip(lost, fresh, strict=True):
                e = entries[n]
                expected = e.current.etag if e.current is not None else ABSENT
                results[n] = Changed(e.domain, e.key, expected,
                                     now.public() if now is not None else None)
        return results  # type: ignore[return-value]

    def _currents(self, keys: Sequence[tuple[str, str]]) -> list[_Current | None]:
        out: list[_Current | None] = []
        for start in range(0, len(keys), CLOUD_BATCH_MAX):
            reads = [{"id": str(n), "method": "GET",
                      "url": _by_number(domain, key).lstrip("/") + _CURRENT_QS}
                     for n, (domain, key) in enumerate(keys[start:start + CLOUD_BATCH_MAX])]
            out += [_current_from(a) for a in self._batch(reads)]
        return out

    # ------------------------------------------------------------------ internals

    def _current(self, domain: str, key: str) -> _Current | None:
        response = self._request(
            "GET", _by_number(domain, key), params=_CURRENT_QUERY, ok=(200, 404))
        if response.status_code == 404:
            return None
        return _current_from({"status": 200, "body": response.json()})

    def _write_upsert(self, domain: str, key: str, current: _Current | None, body: bytes,
                      idempotency_key: str, writer: str = COEXIST_WRITER) -> httpx.Response:
        op = _write_op("0", domain, current, None, idempotency_key)
        headers = {**op["headers"], "X-Client-Id": writer}
        return self._request(op["method"], "/" + op["url"], headers=headers,
                             content=body, ok=(*_WRITTEN, 404, 409, 412))

    def _batch(self, operations: list[dict], headers: dict | None = None) -> list[dict]:
        content = _batch_body(operations)
        response = self._request("POST", "/$batch", content=content, cost=len(operations),
                                 headers={"Content-Type": "application/json", **(headers or {})})
        answers = response.json()["responses"]
        order = {op["id"]: n for n, op in enumerate(operations)}
        return sorted(answers, key=lambda a: order[a["id"]])

    def _request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,),
                 cost: int = 1, **kwargs) -> httpx.Response:
        """One request with technical retries; returns a response whose status is in ``ok``."""
        cost = min(cost, int(getattr(self.limiter, "burst", cost)))
        failure, stopped = "", ""
        budget = retry_budget.current()
        made = 0
        for attempt in range(self.attempts):
            if attempt:
                self.retries += 1
            self.limiter.acquire(cost)
            made += 1
            retry_after = None
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                # Timeouts, refused or reset connections, a body cut mid-way.
                failure = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code in ok:
                    return response
                if not _is_technical(response.status_code):
                    raise _business(response)
                failure = f"HTTP {response.status_code}"
                retry_after = _retry_after_s(response)
            if budget is not None:
                budget.failed()
            if attempt + 1 < self.attempts:
                wait = self._backoff(attempt, retry_after)
                if budget is not None and retry_after is not None \
                        and retry_after > self.max_backoff_s:
                    # Asked to wait longer than an in-call wait may: no attempt spent on a
                    # too-early retry; the bus's next delivery waits Retry-After out.
                    stopped = f" (Retry-After {retry_after:g} s: retried by the bus)"
                    break
                if budget is not None and not budget.may_retry(wait):
                    stopped = (f" (message retry budget: {budget.spent} of {budget.limit} "
                               "failed attempts spent)" if budget.left <= 0 else
                               f" (delivery deadline: next try in {wait:.1f} s is too late)")
                    break
                self.sleep(wait)
        error = CloudTechnicalError(
            f"cloud ERP {method} {path} failed {made} times{stopped}; last: {failure}")
        error.retry_after_s = retry_after
        raise retry_budget.counted(error)

    def _backoff(self, attempt: int, retry_after_s: float | None) -> float:
        # Full jitter spreads a fleet's retries; Retry-After is a floor, the cap a ceiling.
        step = min(self.max_backoff_s, self.base_backoff_s * (2 ** attempt))
        wait = random.uniform(0, step)
        if retry_after_s is not None:
            wait = max(wait, retry_after_s)
        return min(wait, self.max_backoff_s)


class _StreamRetry(Exception):
    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")


# ---------------------------------------------------------------------- helpers


def _changed(domain: str, key: str, current: _Current | None,
             if_revision: str | None) -> Changed | None:
    if if_revision is None:
        return None
    held = current.etag if current is not None else ABSENT
    if held == if_revision:
        return None
    return Changed(domain, key, if_revision, current.public() if current is not None else None)


def _applied(domain: str, key: str, version: int, response: httpx.Response,
             current: _Current | None) -> Applied:
    """``Applied`` with the record's new ETag and cloud id (from the answer's headers)."""
    target_id = current.id if current is not None else None
    location = response.headers.get("OData-EntityId") or response.headers.get("Location")
    if location and location.endswith(")") and "(" in location:
        target_id = location[location.rindex("(") + 1:-1]
    return Applied(domain, key, version, response.headers.get("ETag", ""), target_id)


def _applied_from(domain: str, key: str, version: int, headers: dict,
                  current: _Current | None) -> Applied:
    """``Applied`` from one ``$batch`` answer's headers (ETag, the created record's id)."""
    found = {k.lower(): v for k, v in headers.items()}
    target_id = current.id if current is not None else None
    location = found.get("odata-entityid") or found.get("location")
    if location and location.endswith(")") and "(" in location:
        target_id = location[location.rindex("(") + 1:-1]
    return Applied(domain, key, version, found.get("etag", ""), target_id)


def _entity_set(domain: str) -> str:
    try:
        return RESOURCES[domain]
    except KeyError:
        raise TranslationError(domain, None, "domain", domain, "unknown domain") from None


def _by_number(domain: str, key: str) -> str:
    literal = key.replace("'", "''")
    return f"/{_entity_set(domain)}(number='{quote(literal, safe='')}')"


def _document(record: CanonicalRecord, source_version: int) -> dict:
    return to_json_dict(from_canonical(record, source_version=source_version), body=True)


def _document_bytes(record: CanonicalRecord, source_version: int) -> bytes:
    """``_document`` serialised once, by pydantic-core (no dict, no ``json.dumps``):
    spliced into a ``$batch`` as it is (``_batch_body``)."""
    return to_json_bytes(from_canonical(record, source_version=source_version), body=True)


def _batch_body(operations: list[dict]) -> bytes:
    """The ``$batch`` request's JSON; an operation's ``body`` given as bytes (a document
    already serialised) is spliced in as it is."""
    parts = []
    for op in operations:
        body = op.get("body")
        if isinstance(body, bytes):
            head = json.dumps({k: v for k, v in op.items() if k != "body"},
                              separators=(",", ":")).encode()
            parts.append(head[:-1] + b',"body":' + body + b"}")
        else:
            parts.append(json.dumps(op, separators=(",", ":")).encode())
    return b'{"requests":[' + b",".join(parts) + b"]}"


def _write_op(op_id: str, domain: str, current: _Current | None, body: dict | bytes | None,
              idempotency_key: str) -> dict:
    entity_set = _entity_set(domain)
    if current is None or current.deleted:
        # A create (or the revival of a tombstone) is keyed on what it replaces, so a
        # retry is replayed and a later, different write gets a key of its own.
        precondition = f"create:{current.etag}" if current else "create"
        op = {"id": op_id, "method": "POST", "url": entity_set,
              "headers": {"Idempotency-Key": f"{idempotency_key}:{precondition}"}}
    else:
        op = {"id": op_id, "method": "PATCH", "url": f"{entity_set}({current.id})",
              "headers": {"If-Match": current.etag,
                          "Idempotency-Key": f"{idempotency_key}:{current.etag}"}}
    if body is not None:
        op["body"] = body
    # The adapter needs only the outcome, not the document back.
    op["headers"]["Prefer"] = "return=minimal"
    op["headers"]["Content-Type"] = "application/json"
    return op


def _current_from(answer: dict) -> _Current | None:
    if answer["status"] == 404:
        return None
    if answer["status"] != 200:
        error = answer.get("body", {}).get("error", {})
        raise CloudBusinessError(answer["status"], error.get("message", ""), error.get("code", ""))
    doc = answer["body"]
    return _Current(
        id=doc["id"],
        etag=doc["@odata.etag"],
        version=doc.get("coexistSourceVersion") or 0,
        deleted="@removed" in doc,
        writer=doc.get("lastModifiedBy"),
        modified=doc.get("lastModifiedDateTime"),
    )


def _is_technical(status: int) -> bool:
    return status == 429 or status >= 500 or status == 408


def _business(response: httpx.Response) -> CloudBusinessError:
    code, message, targets = "", response.reason_phrase, []
    try:
        error = response.json().get("error", {})
        code = error.get("code", "")
        message = error.get("message", message)
        targets = [d.get("target", "") for d in error.get("details", [])]
    except (ValueError, AttributeError):
        message = response.text[:500] or message
    return CloudBusinessError(response.status_code, message, code, targets)


def _retry_after_s(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(raw).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
