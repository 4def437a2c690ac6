"""The cloud ERP simulator's API: OData v4 JSON conventions over the cloud models.

Routes (``{set}`` is an entity set of ``coexistence.cloud.models.RESOURCE_MODELS``):

``GET  /{set}``                      list: ``$top`` (default 100, max 1000), ``$skiptoken``,
                                     ``$filter`` (``number eq '...'``,
                                     ``lastModifiedDateTime gt <ISO>``, joined by ``and``),
                                     ``modifiedSince=<ISO>``; ``value`` + ``@odata.nextLink``
``POST /{set}``                      create; the server assigns the UUID ``id``; 409 when the
                                     number exists (a tombstone with that number is revived,
                                     unless ``If-None-Match: *``: then 412);
                                     ``customers`` without a ``number``: the server assigns
                                     the next of its sequence (``NUMBERED_SETS``)
``GET|PATCH|DELETE /{set}({id})``    by id, or by alternate key ``/{set}(number='10042')``;
                                     ``?includeDeleted=true`` shows a tombstone (``@removed``),
                                     ``$select=id,coexistSourceVersion`` only those fields
``POST /$batch``                     ``{"requests": [...]}`` of up to 200 operations, each
                                     answered in ``{"responses": [...]}``; one transaction
``GET  /export/{set}?after=``        every live record as NDJSON, sorted by ``number``
                                     (= canonical key, what reconciliation merges on);
                                     ``after`` resumes behind a number after a broken stream
``GET  /reconcile/{set}/...``        segment checksums and key-range reads for reconciliation
                                     (``checksum``)
``GET  /changes?after=&limit=``      change feed, strictly increasing ``cursor``, ``clientId``
``GET|PUT /admin/faults``            read or replace the fault settings (see ``faults``)
``GET  /admin/stats``                faults injected so far, by kind (``injected``), and
                                     requests answered outside ``/admin`` (``requests``)
``POST /admin/reset``                forget everything (data, feed, keys, faults): tests
``*    /admin/as/{client}/...``      any request above made as another client (a person's
                                     write in tests), exempt from faults and rate limits

Concurrency: PATCH and DELETE honour ``If-Match`` (412 on mismatch); without
``If-Match`` they apply unconditionally (last writer wins, as a person's edit in
the UI does).  Every write honours ``Idempotency-Key`` per client: the same key
and body replay the first 2xx answer (header ``Idempotency-Replayed: true``);
the same key with another body is 422.  ``Prefer: return=minimal`` answers a
POST or PATCH 204 with ``ETag`` (and ``Location``) and no document.  ``DELETE`` records
``X-Coexist-Source-Version`` in the tombstone, the delete's counterpart of the
``coexistSourceVersion`` field.

Clients: with tokens configured, ``Authorization: Bearer`` names the client
(401 otherwise); without, ``X-Client-Id`` does (default ``anonymous``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable
from urllib.parse import quote, unquote

from coexistence.cloud.models import CloudResource
from workers.cloud_sim import checksum
from workers.cloud_sim.faults import Faults, FaultSpecError, parse_faults
from workers.cloud_sim.http import Request, Response
from workers.cloud_sim.protocol import (
    MINIMAL_APPLIED,
    ApiError,
    batch_size,
    check_if_match,
    int_param,
    iso_param,
    json_response,
    minimal,
    parse_json,
    resource_model,
    selected_fields,
    validate,
    validate_stored,
)
from workers.cloud_sim.store import Row, Store
from workers.ratelimit import LocalTokenBucket

log = logging.getLogger("coexist.cloud_sim")

#: Operations per $batch request.
MAX_BATCH_OPERATIONS = 200
#: Default and largest page of a list or the change feed.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: Entity sets whose POST may leave ``number`` out (the server assigns it), and the first
#: number of each sequence: customers numbered from 500000 up, apart from the legacy
#: ERP's sequence (100000 up) so the two ERPs' new customers do not meet during a
#: coexistence in which both create some.
NUMBERED_SETS: dict[str, int] = {"customers": 500_000}
#: Header carrying the source version of a DELETE (PATCH/POST carry it in the body).
SOURCE_VERSION_HEADER = "x-coexist-source-version"

_KEY = re.compile(r"^/?([A-Za-z]+)(?:\((.*)\))?$")
_NUMBER_KEY = re.compile(r"^number='((?:[^']|'')*)'$")
_FILTER_TERM = re.compile(
    r"^\s*(?:number\s+eq\s+'((?:[^']|'')*)'|lastModifiedDateTime\s+gt\s+(\S+))\s*$"
)
#: ``<field> eq '...'`` on a foreign-key field of the document, as OData services filter
#: by them (the governed API looks prices and documents up by customer, order and item).
_FIELD_TERM = re.compile(
    r"^\s*(customerNumber|orderNumber|itemNumber)\s+eq\s+'((?:[^']|'')*)'\s*$")


# An operation's answer before it becomes bytes: status, headers, JSON body (or None).
Answer = tuple[int, list[tuple[str, str]], dict | None]


class CloudSimulator:
    """The request handler; owns the store, the faults and the per-client buckets."""

    def __init__(
        self,
        store: Store,
        *,
        faults: Faults | None = None,
        tokens: dict[str, str] | None = None,
        rate_per_s: float = 0.0,
        burst: float = 0.0,
        clock: Callable[[], float] | None = None,
    ):
        self.store = store
        self.faults = faults or Faults()
        #: bearer token -> client id; empty = open access by X-Client-Id.
        self.tokens = dict(tokens or {})
        self.rate_per_s = rate_per_s
        self.burst = max(burst or rate_per_s, 1.0)
        self.buckets: dict[str, LocalTokenBucket] = {}
        self.base_url = ""
        self._clock = clock
        #: Faults injected so far, by kind, and requests seen (``/admin/stats``).
        self.injected: dict[str, int] = {}
        self.requests = 0

    # ----------------------------------------------------------------- entry point

    async def __call__(self, req: Request) -> Response:
        try:
            client = self._client(req)
            path = req.path
            if path.startswith("/admin/"):
                if path == "/admin/faults":
                    return self._admin_faults(req)
                if path == "/admin/stats" and req.method == "GET":
                    return json_response(200, {"injected": dict(self.injected),
                                               "requests": self.requests})
                if path == "/admin/reset" and req.method == "POST":
                    self.store.reset()
                    self.faults = Faults()
                    self.buckets.clear()
                    self.injected.clear()
                    self.requests = 0
                    return json_response(204, None)
                match = re.match(r"^/admin/as/([^/]+)(/.*)$", path)
                if not match:
                    raise ApiError(404, "NotFound", f"no admin resource {path}")
                return self._dispatch(req, match.group(2), unquote(match.group(1)))
            return await self._guarded(req, client)
        except ApiError as err:
            return json_response(err.status, err.body(), err.headers)
        except Exception:
            # A simulator bug must still answer, or the client hangs until its timeout.
            log.exception("unhandled error on %s %s", req.method, req.path)
            return json_response(500, ApiError(500, "InternalError", "simulator error").body())

    async def _guarded(self, req: Request, client: str) -> Response:
        is_write = req.method in ("POST", "PATCH", "DELETE", "PUT")
        fault = self.faults.draw(is_write)
        self.requests += 1
        if fault is not None:
            self.injected[fault] = self.injected.get(fault, 0) + 1
        retry_after = [("Retry-After", str(int(self.faults.retry_after_s)))]
        if fault == "429":
            raise ApiError(429, "TooManyRequests", "injected 429 burst", headers=retry_after)
        if fault == "error":
            raise ApiError(503, "ServiceUnavailable", "injected 503", headers=retry_after)
        cost = 1
        if req.path == "/$batch":
            cost = max(1, batch_size(req.body))
        self._throttle(client, cost)
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        response = self._dispatch(req, req.path, client)
        if fault == "error_after":
            return json_response(500, ApiError(500, "InternalError", "injected 500").body())
        if fault in ("drop", "timeout"):
            response.after = "drop" if fault == "drop" else "hang"
            response.hang_s = self.faults.hang_s
        return response

    def _client(self, req: Request) -> str:
        if not self.tokens:
            return req.headers.get("x-client-id") or "anonymous"
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        client = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if client is None:
            raise ApiError(401, "Unauthorized", "missing or unknown bearer token",
                           headers=[("WWW-Authenticate", "Bearer")])
        return client

    def _throttle(self, client: str, cost: int) -> None:
        if not self.rate_per_s:
            return
        bucket = self.buckets.get(client)
        if bucket is None:
            kwargs = {"clock": self._clock} if self._clock else {}
            bucket = self.buckets[client] = LocalTokenBucket(self.rate_per_s, self.burst, **kwargs)
        # A $batch costs one token per operation, capped at the bucket's size so
        # a batch larger than the burst is slow rather than impossible.
        cost = min(cost, int(bucket.burst))
        wait_s = bucket.try_acquire(cost)
        if wait_s > 0:
            seconds = max(1, int(wait_s + 0.999))
            raise ApiError(429, "TooManyRequests",
                           f"rate limit of {self.rate_per_s:g}/s for client {client} exceeded",
                           headers=[("Retry-After", str(seconds))])

    def _admin_faults(self, req: Request) -> Response:
        if req.method in ("PUT", "POST"):
            try:
                self.faults = parse_faults(parse_json(req.body))
            except FaultSpecError as exc:
                raise ApiError(422, "InvalidFaults", str(exc)) from None
        elif req.method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{req.method} /admin/faults")
        return json_response(200, self.faults.as_dict())

    # ----------------------------------------------------------------- routing

    def _dispatch(self, req: Request, path: str, client: str) -> Response:
        if path == "/$batch":
            if req.method != "POST":
                raise ApiError(405, "MethodNotAllowed", "use POST for $batch")
            return json_response(200, self._batch(req.body, client))
        if path == "/changes":
            return json_response(200, self._changes(req.query))
        if path.startswith("/export/"):
            entity_set = path[len("/export/"):]
            resource_model(entity_set)
            after = req.query.get("after", "")
            return Response(200, stream=self.store.export(entity_set, after),
                            content_type="application/x-ndjson")
        if path.startswith("/reconcile/"):
            return checksum.handle(self.store, req, path)
        if path == "/health":
            return json_response(200, {"status": "ok"})
        body = parse_json(req.body) if req.body else None
        self.store.begin()
        try:
            status, headers, doc = self._operation(
                req.method, path, req.query, req.headers, body, client)
            self.store.commit()
        except BaseException:
            self.store.rollback()
            raise
        return json_response(status, doc, headers)

    def _operation(self, method: str, path: str, query: dict, headers: dict, body,
                   client: str) -> Answer:
        match = _KEY.match(path)
        if not match:
            raise ApiError(404, "NotFound", f"no resource at {path}")
        entity_set, key = match.group(1), match.group(2)
        model = resource_model(entity_set)
        if key is None:
            if method == "GET":
                return 200, [], self._list(entity_set, query)
            if method == "POST":
                return self._idempotent(
                    headers, client, method, path, body,
                    lambda: self._create(entity_set, model, body, client, headers))
            raise ApiError(405, "MethodNotAllowed", f"{method} {path}")
        row = self._find(entity_set, key)
        if method == "GET":
            if row is None or (row.deleted and query.get("includeDeleted") != "true"):
                # Answered, not raised: a backfill's read of 200 absent records is the
                # hot path of an initial load, and an exception per record costs more.
                return 404, [], {"error": {"code": "NotFound",
                                           "message": f"no {entity_set} {key}"}}
            doc = row.tombstone() if row.deleted else row.document(selected_fields(query))
            return 200, [("ETag", row.etag)], doc
        if method == "PATCH":
            return self._idempotent(headers, client, method, path, body,
                                    lambda: self._patch(row, key, model, body, headers, client))
        if method == "DELETE":
            return self._idempotent(headers, client, method, path, body,
                                    lambda: self._delete(row, key, headers, client))
        raise ApiError(405, "MethodNotAllowed", f"{method} {path}")

    def _find(self, entity_set: str, key: str) -> Row | None:
        number = _NUMBER_KEY.match(key)
        if number:
            return self.store.by_number(entity_set, number.group(1).replace("''", "'"))
        return self.store.by_id(entity_set, key.strip("'"))

    # ----------------------------------------------------------------- reads

    def _list(self, entity_set: str, query: dict) -> dict:
        top = int_param(query, "$top", DEFAULT_PAGE, MAX_PAGE)
        modified_after = query.get("modifiedSince") or None
        number = None
        fields: dict[str, str] = {}
        if query.get("$filter"):
            for term in re.split(r"\s+and\s+", query["$filter"]):
                m = _FILTER_TERM.match(term)
                if not m:
                    f = _FIELD_TERM.match(term)
                    if not f:
                        raise ApiError(400, "BadFilter",
                                       f"unsupported $filter term {term!r}; use number eq "
                                       "'...', customerNumber|orderNumber|itemNumber eq '...' or "
                                       "lastModifiedDateTime gt <ISO 8601>", ["$filter"])
                    fields[f.group(1)] = f.group(2).replace("''", "'")
                    continue
                if m.group(1) is not None:
                    number = m.group(1).replace("''", "'")
                else:
                    modified_after = m.group(2)
        if modified_after is not None:
            modified_after = iso_param(modified_after)
        if number is not None:
            row = self.store.by_number(entity_set, number)
            hit = row is not None and not row.deleted and (
                modified_after is None or row.modified > modified_after) and all(
                row.data.get(k) == v for k, v in fields.items())
            return {"value": [row.document()] if hit else []}
        rows = self.store.page(entity_set, after_number=query.get("$skiptoken"),
                               modified_after=modified_after, top=top + 1, fields=fields)
        out: dict = {"value": [r.document() for r in rows[:top]]}
        if len(rows) > top:
            link = {k: v for k, v in query.items() if k != "$skiptoken"}
            link["$skiptoken"] = rows[top - 1].number
            qs = "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in link.items())
            out["@odata.nextLink"] = f"{self.base_url}/{entity_set}?{qs}"
        return out

    def _changes(self, query: dict) -> dict:
        after = int_param(query, "after", 0, None)
        limit = int_param(query, "limit", DEFAULT_PAGE, MAX_PAGE)
        value = self.store.changes(after, limit)
        return {"value": value, "lastCursor": value[-1]["cursor"] if value else after}

    # ----------------------------------------------------------------- writes

    def _idempotent(self, headers: dict, client: str, method: str, path: str, body,
                    apply: Callable[[], Answer]) -> Answer:
        key = headers.get("idempotency-key")
        if not key:
            return apply()
        # A retry sends the same JSON in the same key order, so no sort_keys (costly).
        fingerprint = hashlib.sha256(f"{method} {path}\n{json.dumps(body)}".encode()).hexdigest()
        seen = self.store.remembered(client, key)
        if seen is not None:
            if seen[0] != fingerprint:
                raise ApiError(422, "IdempotencyKeyReused",
                               f"Idempotency-Key {key!r} was used for a different request",
                               ["Idempotency-Key"])
            status, etag, raw = seen[1], seen[2], seen[3]
            replay = [("Idempotency-Replayed", "true")] + ([("ETag", etag)] if etag else [])
            return status, replay, json.loads(raw) if raw else None
        status, out_headers, doc = apply()
        etag = next((v for k, v in out_headers if k == "ETag"), None)
        raw = json.dumps(doc).encode() if doc is not None else b""
        self.store.remember(client, key, fingerprint, status, etag, raw)
        return status, out_headers, doc

    def _create(self, entity_set: str, model: type[CloudResource], body, client: str,
                headers: dict) -> Answer:
        if entity_set in NUMBERED_SETS and isinstance(body, dict) and not body.get("number"):
            # No number given: the server assigns the next one of its sequence, in this
            # request's transaction (an Idempotency-Key replay answers the same number).
            body = {**body, "number": self.store.next_number(entity_set,
                                                             NUMBERED_SETS[entity_set])}
        raw, number, version = validate_stored(model, body)
        existing = self.store.by_number(entity_set, number)
        if existing is not None and not existing.deleted:
            raise ApiError(409, "EntityAlreadyExists",
                           f"{entity_set} number {number!r} already exists as {existing.id}",
                           ["number"])
        if existing is not None and headers.get("if-none-match") == "*":
            # A create of a number never used: not the revival of its tombstone.
            raise ApiError(412, "PreconditionFailed",
                           f"If-None-Match *: {entity_set} number {number!r} is held by a "
                           f"deleted record {existing.id}", headers=[("ETag", existing.etag)])
        if existing is not None:
            row = self.store.replace(existing, raw, version, client)
        else:
            row = self.store.insert(entity_set, number, raw, version, client)
        location = f"{self.base_url}/{entity_set}({row.id})"
        out = [("ETag", row.etag), ("Location", location)]
        if minimal(headers):
            return 204, [*out, ("OData-EntityId", location), MINIMAL_APPLIED], None
        return 201, out, row.document()

    def _patch(self, row: Row | None, key: str, model, body, headers: dict,
               client: str) -> Answer:
        if row is None or row.deleted:
            raise ApiError(404, "NotFound", f"no {key}")
        check_if_match(row, headers)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "PATCH body must be a JSON object")
        if "number" in body and body["number"] != row.number:
            raise ApiError(422, "ImmutableField", "number cannot be changed", ["number"])
        data = validate(model, {**row.data, **body})
        new = self.store.replace(row, data, data.get("coexistSourceVersion"), client)
        if minimal(headers):
            return 204, [("ETag", new.etag), MINIMAL_APPLIED], None
        return 200, [("ETag", new.etag)], new.document()

    def _delete(self, row: Row | None, key: str, headers: dict, client: str) -> Answer:
        if row is None or row.deleted:
            raise ApiError(404, "NotFound", f"no {key}")
        check_if_match(row, headers)
        version = row.source_version
        if SOURCE_VERSION_HEADER in headers:
            try:
                version = int(headers[SOURCE_VERSION_HEADER])
            except ValueError:
                raise ApiError(400, "BadRequest", "X-Coexist-Source-Version must be an integer",
                               [SOURCE_VERSION_HEADER]) from None
        new = self.store.mark_deleted(row, version, client)
        return 204, [("ETag", new.etag)], None

    # ----------------------------------------------------------------- $batch

    def _batch(self, raw: bytes, client: str) -> dict:
        body = parse_json(raw)
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list):
            raise ApiError(400, "BadRequest", "$batch body must be {\"requests\": [...]}",
                           ["requests"])
        if len(requests) > MAX_BATCH_OPERATIONS:
            raise ApiError(413, "BatchTooLarge",
                           f"{len(requests)} operations; at most {MAX_BATCH_OPERATIONS}",
                           ["requests"])
        responses = []
        self.store.begin()
        try:
            for i, op in enumerate(requests):
                responses.append(self._batch_op(i, op, client))
            self.store.commit()
        except BaseException:
            self.store.rollback()
            raise
        return {"responses": responses}

    def _batch_op(self, i: int, op, client: str) -> dict:
        # No savepoint per operation: every ApiError is raised before an
        # operation's first write (checks, then writes), so a refused operation
        # has written nothing; any other exception rolls the whole batch back.
        op_id = str(op.get("id", i)) if isinstance(op, dict) else str(i)
        try:
            if not isinstance(op, dict) or not isinstance(op.get("url"), str):
                raise ApiError(400, "BadRequest", "each operation needs method and url",
                               [f"requests/{i}"])
            raw_path, _, raw_query = op["url"].partition("?")
            query = dict(p.partition("=")[::2] for p in raw_query.split("&") if p)
            headers = {k.lower(): str(v) for k, v in (op.get("headers") or {}).items()}
            path = "/" + unquote(raw_path).lstrip("/")
            status, out_headers, doc = self._operation(
                str(op.get("method", "GET")).upper(), path, query, headers, op.get("body"),
                client)
        except ApiError as err:
            status, out_headers, doc = err.status, err.headers, err.body()
        answer: dict = {"id": op_id, "status": status, "headers": dict(out_headers)}
        if doc is not None:
            answer["body"] = doc
        return answer


