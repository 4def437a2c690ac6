"""The CRM simulator's API: Salesforce REST semantics over the org in ``schema``.

Routes (``/services/data/vNN.N`` is written ``…``):

``POST /services/oauth2/token``          OAuth 2.0 client-credentials or password grant;
                                         ``{access_token, instance_url, id, token_type,
                                         issued_at, signature}``
``GET  …/limits``                        ``DailyApiRequests {Max, Remaining}``
``GET  …/sobjects``, ``…/sobjects/{o}/describe``   metadata
``POST …/sobjects/{o}``                  create: 201 ``{id, success, errors}``
``GET|PATCH|DELETE …/sobjects/{o}/{id}``  by record id (PATCH/DELETE answer 204)
``GET|PATCH|DELETE …/sobjects/{o}/{field}/{value}``  by external id; PATCH upserts: 201
                                         ``created: true`` / 200 ``created: false`` (204 below
                                         v46), 300 + the matching record URLs when the value
                                         is not unique, 404 unknown object or field, 400 when
                                         the body names ``Id`` or the external-id field
``PATCH …/composite/sobjects/{o}/{field}``  sObject Collections upsert: at most 200 records,
                                         results in request order, 200 when well formed,
                                         ``allOrNone`` (default false) rolls everything back
``GET  …/query?q=SOQL``, ``…/query/{locator}``  a SOQL subset (see ``soql``), 2000 a page
``GET  /services/pubsub/topic/data/ChangeEvents``  change data capture (see below)
``*    /admin/...``                      test and demo controls (see ``_admin``)

Errors are JSON arrays of ``{message, errorCode, fields}``.  Every API response carries
``Sforce-Limit-Info: api-usage=n/max``, n counted over a rolling 24 hours; over the budget
every request is refused 403 ``REQUEST_LIMIT_EXCEEDED`` (no 429, no Retry-After).  An
expired or unknown token is 401 ``INVALID_SESSION_ID``.

Change data capture: Salesforce delivers change events through the Pub/Sub API (gRPC
``Subscribe`` on ``/data/ChangeEvents`` with a replay preset).  This simulator serves the
same events over plain HTTP: ``replayPreset=EARLIEST|LATEST|CUSTOM``, ``replayId`` (after
which to read, CUSTOM), ``numRequested`` (at most 1000) and ``waitMs`` (long poll, at most
20 s) map one to one onto a ``FetchRequest``; each event is ``{replayId, event}`` where
``event`` is the decoded Avro payload (``ChangeEventHeader`` + changed fields).  Events are
kept ``retention_s`` (72 hours by default); a replay id whose successors were purged is
refused 400 ``INVALID_REPLAY_ID`` rather than silently skipping the gap.  ``changeOrigin`` is
``com/salesforce/api/rest/NN.N;client=X`` from the writer's ``Sforce-Call-Options: client=X``
header, empty for a person's edit in the UI.  Reading events does not count against the
REST API budget (Pub/Sub has its own allocations).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote

from workers.cloud_sim.http import Request, Response
from workers.crm_sim import reads, soql
from workers.crm_sim.faults import Faults, FaultSpecError, parse_faults
from workers.crm_sim.protocol import (
    NOT_FOUND,
    SfError,
    allow_save,
    call_options_client,
    int_param,
    json_response,
    user_id,
)
from workers.crm_sim.records import Ctx, Records, SaveError
from workers.crm_sim.schema import OBJECTS, FieldError
from workers.crm_sim.store import Store

log = logging.getLogger("coexist.crm_sim")

#: Records per sObject Collections request.
MAX_COLLECTION_RECORDS = 200
#: API version that introduced ``created`` in upsert answers and sObject Collections upsert.
UPSERT_CREATED_SINCE = 46.0
#: Records per query page (the platform's default and largest batch size).
QUERY_PAGE = 2000
#: Default daily API request allocation (a small Enterprise Edition org).
DEFAULT_DAILY_LIMIT = 100_000
#: How long an access token is valid, in seconds (the org's session timeout).
DEFAULT_SESSION_TTL_S = 7200.0
#: How long change events are kept, in seconds.
DEFAULT_RETENTION_S = 72 * 3600.0
#: Largest long-poll wait and page of the change-event feed.
MAX_WAIT_MS = 20_000
MAX_EVENTS = 1000

_DATA = re.compile(r"^/services/data/v(\d+\.\d)(/.*)?$")
_LIMIT_EXCEEDED = [{"message": "TotalRequests Limit exceeded.",
                    "errorCode": "REQUEST_LIMIT_EXCEEDED"}]
_EXPIRED = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


class CrmSimulator:
    """The request handler: owns the store, the faults, the clock and the budget."""

    def __init__(
        self,
        store: Store,
        *,
        faults: Faults | None = None,
        clients: dict[str, str] | None = None,
        daily_limit: int = DEFAULT_DAILY_LIMIT,
        session_ttl_s: float = DEFAULT_SESSION_TTL_S,
        retention_s: float = DEFAULT_RETENTION_S,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.faults = faults or Faults()
        #: client id -> secret; empty: any client id is accepted (the demo's open mode).
        self.clients = dict(clients or {})
        self.daily_limit = self._initial_limit = daily_limit
        self.session_ttl_s = session_ttl_s
        self.retention_s = retention_s
        self._clock = clock
        #: Seconds added to the clock by ``/admin/clock`` (expiry, retention, budget tests).
        self.offset_s = 0.0
        #: Simulator time until which every API request is over the limit.
        self.limit_until = 0.0
        self.records = Records(store, lambda: self.faults)
        self.base_url = ""
        self._locators: dict[str, tuple[list[dict], int, str]] = {}
        self._new_events: asyncio.Event | None = None

    def now(self) -> float:
        return self._clock() + self.offset_s

    def set_faults(self, faults: Faults) -> None:
        """Replace the fault settings (a limit window starts now, or ends without one)."""
        self.faults = faults
        self.limit_until = self.now() + faults.limit_exceeded_s if faults.limit_exceeded_s else 0.0

    # ----------------------------------------------------------------- entry point

    async def __call__(self, req: Request) -> Response:
        try:
            path = req.path
            if path.startswith("/admin/"):
                return await self._admin(req)
            if path == "/services/oauth2/token":
                return self._token(req)
            if path == "/services/pubsub/topic/data/ChangeEvents":
                self._session(req)
                return await self._change_events(req.query)
            if path in ("/services/data", "/services/data/"):
                return json_response(200, [{"version": v, "url": f"/services/data/v{v}"}
                                   for v in ("45.0", "46.0", "58.0", "60.0")])
            match = _DATA.match(path)
            if not match:
                raise SfError(404, NOT_FOUND)
            return await self._api(req, match.group(1), match.group(2) or "/")
        except SfError as err:
            return json_response(err.status, err.entries, err.headers)
        except Exception:
            # A simulator bug must still answer, or the client hangs until its timeout.
            log.exception("unhandled error on %s %s", req.method, req.path)
            return json_response(500, [{"errorCode": "UNKNOWN_EXCEPTION",
                                "message": "An unexpected error occurred in the simulator"}])

    async def _api(self, req: Request, version: str, rest: str) -> Response:
        client, user = self._session(req)
        fault = self.faults.draw()
        if fault == "401":
            raise SfError(401, _EXPIRED)
        used = self.store.usage_since(self._minute() - 24 * 60)
        if used >= self.daily_limit or self.now() < self.limit_until:
            raise SfError(403, _LIMIT_EXCEEDED, [self._limit_header(used)])
        self.store.count_request(self._minute())
        limit_info = self._limit_header(used + 1)
        if fault == "503":
            raise SfError(503, [{"errorCode": "SERVER_UNAVAILABLE",
                                 "message": "Server temporarily unavailable"}], [limit_info])
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        origin = f"com/salesforce/api/rest/{version}"
        call_client = call_options_client(req.headers.get("sforce-call-options", ""))
        if call_client:
            origin += f";client={call_client}"
        ctx = Ctx(version, user, origin, allow_save=allow_save(req.headers),
                  now=datetime.fromtimestamp(self.now(), UTC))
        try:
            response = self._dispatch(req, rest, ctx)
        except SfError as err:
            err.headers.append(limit_info)
            raise
        response.headers.append(limit_info)
        if fault in ("drop", "timeout"):
            response.after = "drop" if fault == "drop" else "hang"
            response.hang_s = self.faults.hang_s
        return response

    def _minute(self) -> int:
        return int(self.now() // 60)

    def _limit_header(self, used: int) -> tuple[str, str]:
        return ("Sforce-Limit-Info", f"api-usage={used}/{self.daily_limit}")

    # ----------------------------------------------------------------- auth

    def _token(self, req: Request) -> Response:
        if req.method != "POST":
            raise SfError(405, [{"errorCode": "METHOD_NOT_ALLOWED", "message": "use POST"}])
        form = dict(parse_qsl(req.body.decode("utf-8", "replace")))
        grant = form.get("grant_type")
        client_id = form.get("client_id", "")
        if grant not in ("client_credentials", "password"):
            return json_response(400, {"error": "unsupported_grant_type",
                               "error_description": "grant type not supported"})
        if not client_id or (self.clients and
                             not secrets.compare_digest(self.clients.get(client_id, "\0"),
                                                        form.get("client_secret", ""))):
            return json_response(400, {"error": "invalid_client_id",
                               "error_description": "client identifier invalid"})
        username = form.get("username") or f"{client_id}@integration.example"
        token = "00DSIM!" + secrets.token_urlsafe(32)
        issued_ms = int(self.now() * 1000)
        self.store.add_session(token, client_id, user_id(username), issued_ms)
        uid = user_id(username)
        return json_response(200, {
            "access_token": token,
            "instance_url": self.base_url,
            "id": f"{self.base_url}/id/00DSIM000000001AAA/{uid}",
            "token_type": "Bearer",
            "issued_at": str(issued_ms),
            "signature": hashlib.sha256(token.encode()).hexdigest()[:43],
        })

    def _session(self, req: Request) -> tuple[str, str]:
        auth = req.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        found = None
        if scheme.lower() in ("bearer", "oauth") and token.strip():
            found = self.store.session(token.strip())
        if found is None or self.now() * 1000 - found[2] > self.session_ttl_s * 1000:
            raise SfError(401, _EXPIRED)
        return found[0], found[1]

    # ----------------------------------------------------------------- routing

    def _dispatch(self, req: Request, rest: str, ctx: Ctx) -> Response:
        parts = [unquote(p) for p in rest.strip("/").split("/")] if rest.strip("/") else []
        method = req.method
        if parts == ["limits"]:
            used = self.store.usage_since(self._minute() - 24 * 60)
            return json_response(200, {
                "DailyApiRequests": {"Max": self.daily_limit,
                                     "Remaining": max(self.daily_limit - used, 0)},
                "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
            })
        if parts[:1] == ["query"]:
            return self._query(req, parts[1:], ctx)
        if parts == ["sobjects"]:
            return json_response(200, {"encoding": "UTF-8", "maxBatchSize": MAX_COLLECTION_RECORDS,
                               "sobjects": [reads.describe_head(o) for o in OBJECTS]})
        if parts[:1] == ["sobjects"] and len(parts) >= 2:
            obj = self._object(parts[1])
            tail = parts[2:]
            if tail == ["describe"]:
                return json_response(200, reads.describe(obj.name))
            if not tail:
                if method == "GET":
                    return json_response(200, {"objectDescribe": reads.describe_head(obj.name)})
                if method == "POST":
                    return self._write(ctx, lambda: self._create(ctx, obj, req))
            if len(tail) == 1:
                return self._by_id(req, ctx, obj, tail[0])
            if len(tail) == 2:
                return self._by_external_id(req, ctx, obj, tail[0], tail[1])
        if parts[:2] == ["composite", "sobjects"] and len(parts) == 4 and method == "PATCH":
            if float(ctx.api_version) < UPSERT_CREATED_SINCE:
                raise SfError(404, NOT_FOUND)
            obj = self._object(parts[2])
            return self._collection_upsert(req, ctx, obj, parts[3])
        raise SfError(404, NOT_FOUND)

    @staticmethod
    def _object(name: str):
        if name not in OBJECTS:
            raise SfError(404, NOT_FOUND)
        return OBJECTS[name]

    def _write(self, ctx: Ctx, operation: Callable[[], Response]) -> Response:
        """Run a write in one transaction; wake the change-event readers after commit."""
        self.store.begin()
        try:
            response = operation()
            self.store.commit()
        except BaseException:
            self.store.rollback()
            raise
        if ctx.wrote_events and self._new_events is not None:
            self._new_events.set()
            self._new_events = None
        return response

    # ----------------------------------------------------------------- single records

    def _body(self, req: Request):
        if not req.body:
            return {}
        try:
            return json.loads(req.body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SfError.one(400, "JSON_PARSER_ERROR", f"The request body is not JSON: {exc}"
                              ) from None

    def _create(self, ctx: Ctx, obj, req: Request) -> Response:
        body = self._body(req)
        if isinstance(body, dict) and "Id" in body:
            raise SfError.one(400, "INVALID_FIELD", "Id is not allowed when creating a record",
                              ["Id"])
        try:
            saved = self.records.save(ctx, obj, body, None)
        except SaveError as err:
            raise SfError(400, [err.rest()]) from None
        return json_response(201, {"id": saved.id, "success": True, "errors": []})

    def _by_id(self, req: Request, ctx: Ctx, obj, id_: str) -> Response:
        doc = self.store.get(id_)
        if doc is None or not id_.startswith(obj.key_prefix):
            raise SfError(404, NOT_FOUND)
        if req.method == "GET":
            return json_response(200, reads.shown(obj.name, doc, ctx, req.query.get("fields")))
        if req.method == "PATCH":
            body = self._body(req)

            def update() -> Response:
                try:
                    self.records.save(ctx, obj, body, doc)
                except SaveError as err:
                    raise SfError(400, [err.rest()]) from None
                return json_response(204, None)

            return self._write(ctx, update)
        if req.method == "DELETE":
            def delete() -> Response:
                try:
                    self.records.delete(ctx, obj, doc)
                except SaveError as err:
                    raise SfError(400, [err.rest()]) from None
                return json_response(204, None)

            return self._write(ctx, delete)
        raise SfError(405, [{"errorCode": "METHOD_NOT_ALLOWED",
                             "message": f"HTTP Method '{req.method}' not allowed"}])

    def _external_field(self, obj, name: str):
        f = obj.fields.get(name)
        if f is None or not (f.external_id or name == "Id"):
            raise SfError.one(404, "NOT_FOUND", "Provided external ID field does not exist or "
                              f"is not accessible: {name}")
        return f

    def _by_external_id(self, req: Request, ctx: Ctx, obj, field_name: str,
                        value: str) -> Response:
        self._external_field(obj, field_name)
        ids = ([value] if self.store.get(value) else []) if field_name == "Id" else \
            self.store.find_external(obj.name, field_name, value)
        if len(ids) > 1:
            return json_response(300, [f"/services/data/v{ctx.api_version}/sobjects/"
                                       f"{obj.name}/{i}" for i in ids])
        if req.method == "GET":
            if not ids:
                raise SfError(404, NOT_FOUND)
            return json_response(200, reads.shown(obj.name, self.store.get(ids[0]), ctx,
                                          req.query.get("fields")))
        if req.method == "PATCH":
            return self._write(ctx, lambda: self._upsert(req, ctx, obj, field_name, value, ids))
        if req.method == "DELETE":
            if not ids:
                raise SfError(404, NOT_FOUND)
            return self._by_id(req, ctx, obj, ids[0])
        raise SfError(405, [{"errorCode": "METHOD_NOT_ALLOWED",
                             "message": f"HTTP Method '{req.method}' not allowed"}])

    def _upsert(self, req: Request, ctx: Ctx, obj, field_name: str, value: str,
                ids: list[str]) -> Response:
        body = self._body(req)
        if isinstance(body, dict):
            for name in ("Id", field_name):
                if name in body:
                    raise SfError.one(400, "INVALID_FIELD",
                                      f"{name} is taken from the URL of an upsert by external "
                                      "ID and may not be in the body", [name])
        existing = self.store.get(ids[0]) if ids else None
        try:
            saved = self.records.save(ctx, obj, body, existing, preset={field_name: value})
        except SaveError as err:
            raise SfError(400, [err.rest()]) from None
        newer = float(ctx.api_version) >= UPSERT_CREATED_SINCE
        answer = {"id": saved.id, "success": True, "errors": []}
        if saved.created:
            if newer:
                answer["created"] = True
            return json_response(201, answer, [("Location", f"/services/data/v{ctx.api_version}/"
                                                    f"sobjects/{obj.name}/{saved.id}")])
        if not newer:
            return json_response(204, None)
        return json_response(200, {**answer, "created": False})

    # ----------------------------------------------------------------- sObject Collections

    def _collection_upsert(self, req: Request, ctx: Ctx, obj, field_name: str) -> Response:
        self._external_field(obj, field_name)
        body = self._body(req)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list):
            raise SfError.one(400, "JSON_PARSER_ERROR",
                              "The body must be {\"allOrNone\": bool, \"records\": [...]}")
        if len(records) > MAX_COLLECTION_RECORDS:
            raise SfError.one(400, "EXCEEDED_ID_LIMIT",
                              f"Record limit exceeded. Max is {MAX_COLLECTION_RECORDS}.")
        all_or_none = bool(body.get("allOrNone", False))
        for i, rec in enumerate(records):
            kind = rec.get("attributes", {}).get("type") if isinstance(rec, dict) else None
            if kind is None:
                raise SfError.one(400, "INVALID_INPUT",
                                  f"records[{i}]: the attributes map must name the type")
            if kind != obj.name:
                raise SfError.one(400, "INVALID_INPUT",
                                  f"records[{i}]: type {kind} is not {obj.name}; a collection "
                                  "holds one type")
        values = [rec.get(field_name) for rec in records]
        repeated = {v for v, n in Counter(v for v in values if v is not None).items() if n > 1}

        def run() -> Response:
            results, failed = [], False
            for rec, value in zip(records, values, strict=True):
                result = self._collection_one(ctx, obj, field_name, rec, value, repeated)
                failed = failed or not result["success"]
                results.append(result)
            if failed and all_or_none:
                raise _RolledBack([
                    r if not r["success"] else {
                        "success": False,
                        "errors": [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                    "message": "Record rolled back because not all records "
                                               "were valid and the request was using "
                                               "AllOrNone header", "fields": []}]}
                    for r in results])
            return json_response(200, results)

        try:
            return self._write(ctx, run)
        except _RolledBack as rolled:
            return json_response(200, rolled.results)

    def _collection_one(self, ctx: Ctx, obj, field_name: str, rec: dict, value,
                        repeated: set) -> dict:
        def error(code: str, message: str, fields=()) -> dict:
            return {"success": False,
                    "errors": [{"statusCode": code, "message": message, "fields": list(fields)}]}

        if value is None:
            return error("MISSING_ARGUMENT", f"{field_name} not specified", [field_name])
        if value in repeated:
            return error("DUPLICATE_EXTERNAL_ID", f"Duplicate external id specified: {value}",
                         [field_name])
        if "Id" in rec:
            return error("INVALID_FIELD", "Only external ids are supported; don't use record "
                         "ids", ["Id"])
        ids = self.store.find_external(obj.name, field_name, str(value))
        if len(ids) > 1:
            return error("DUPLICATE_EXTERNAL_ID",
                         f"More than one record found for external id field: {value}",
                         [field_name])
        body = {k: v for k, v in rec.items() if k != field_name}
        existing = self.store.get(ids[0]) if ids else None
        try:
            saved = self.records.save(ctx, obj, body, existing, preset={field_name: value})
        except SaveError as err:  # raised before any write (see Records.save)
            return {"success": False, "errors": [err.collection()]}
        return {"id": saved.id, "success": True, "errors": [], "created": saved.created}

    # ----------------------------------------------------------------- query and describe

    def _query(self, req: Request, tail: list[str], ctx: Ctx) -> Response:
        if tail:
            state = self._locators.pop(tail[0], None)
            if state is None:
                raise SfError.one(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
            rows, pos, obj_name = state
        else:
            text = req.query.get("q")
            if not text:
                raise SfError.one(400, "MALFORMED_QUERY", "the q parameter is required")
            try:
                query = soql.parse(text)
            except FieldError as err:
                raise SfError.one(400, err.code, err.message) from None
            rows, pos, obj_name = reads.run_query(self.store, query), 0, query.obj.name
        page = rows[pos:pos + QUERY_PAGE]
        out: dict = {"totalSize": len(rows), "done": pos + QUERY_PAGE >= len(rows),
                     "records": [{"attributes": reads.attributes(obj_name, r, ctx), **r}
                                 for r in page]}
        if not out["done"]:
            locator = f"01g{uuid.uuid4().hex[:12]}-{pos + QUERY_PAGE}"
            self._locators[locator] = (rows, pos + QUERY_PAGE, obj_name)
            out["nextRecordsUrl"] = f"/services/data/v{ctx.api_version}/query/{locator}"
        return json_response(200, out)

    # ----------------------------------------------------------------- change events

    async def _change_events(self, query: dict) -> Response:
        preset = query.get("replayPreset", "CUSTOM").upper()
        limit = int_param(query, "numRequested", 100, 1, MAX_EVENTS)
        wait_ms = int_param(query, "waitMs", 0, 0, MAX_WAIT_MS)
        self.store.purge_events(int((self.now() - self.retention_s) * 1000))
        latest = self.store.latest_replay_id()
        if preset == "LATEST":
            after = latest
        elif preset == "EARLIEST":
            after = self.store.meta("purged_through")
        elif preset == "CUSTOM":
            after = int_param(query, "replayId", 0, 0, None)
            purged = self.store.meta("purged_through")
            if after < purged:
                raise SfError.one(400, "INVALID_REPLAY_ID",
                                  f"Replay ID {after} is outside the retention window: events up "
                                  f"to {purged} were purged (kept {self.retention_s:g} s). "
                                  "Resubscribe with EARLIEST and reconcile what was missed.")
            if after > latest:
                raise SfError.one(400, "INVALID_REPLAY_ID",
                                  f"Replay ID {after} is newer than the latest event ({latest})")
        else:
            raise SfError.one(400, "INVALID_REPLAY_PRESET",
                              f"replayPreset {preset!r}: use EARLIEST, LATEST or CUSTOM")
        events = self.store.events_after(after, limit)
        if not events and wait_ms:
            if self._new_events is None:
                self._new_events = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_events.wait(), wait_ms / 1000)
            events = self.store.events_after(after, limit)
        # The stored payloads are JSON already (compact, as ``json_response`` writes):
        # spliced in as they are, not decoded and encoded again per read (that was half
        # of the simulator's CPU while coexist's poller and a reader followed the feed).
        listed = ",".join(f'{{"replayId":{r},"event":{e}}}' for r, e in events)
        latest_id = events[-1][0] if events else after
        body = f'{{"events":[{listed}],"latestReplayId":{latest_id}}}'.encode()
        return Response(200, body, [])

    # ----------------------------------------------------------------- admin

    async def _admin(self, req: Request) -> Response:
        """Test and demo controls, exempt from auth, budget and faults.

        ``POST /admin/reset``; ``GET|PUT /admin/faults``; ``PUT /admin/limits``
        ``{"max": n, "clear": true}``; ``POST /admin/clock {"advance_s": s}``;
        ``POST /admin/sessions/expire``; ``* /admin/as/{user}/services/data/...``: a person's
        edit in the UI (``changeOrigin`` empty, not counted, no faults).
        """
        path = req.path
        body = self._body(req) if req.body else {}
        if path == "/admin/reset" and req.method == "POST":
            self.store.reset()
            self.faults = Faults()
            self.offset_s = self.limit_until = 0.0
            self.daily_limit = self._initial_limit
            self._locators.clear()
            return json_response(204, None)
        if path == "/admin/faults":
            if req.method in ("PUT", "POST"):
                try:
                    self.set_faults(parse_faults(body))
                except FaultSpecError as exc:
                    raise SfError.one(422, "INVALID_FAULTS", str(exc)) from None
            return json_response(200, self.faults.as_dict())
        if path == "/admin/limits" and req.method in ("PUT", "POST"):
            if "max" in body:
                self.daily_limit = int(body["max"])
            if body.get("clear"):
                self.store.clear_usage()
            used = self.store.usage_since(self._minute() - 24 * 60)
            return json_response(200, {"max": self.daily_limit, "used": used})
        if path == "/admin/clock" and req.method == "POST":
            self.offset_s += float(body.get("advance_s", 0))
            return json_response(200, {"offset_s": self.offset_s})
        if path == "/admin/sessions/expire" and req.method == "POST":
            self.store.expire_sessions()
            return json_response(204, None)
        match = re.match(r"^/admin/as/([^/]+)(/services/data/v(\d+\.\d)(/.*))$", path)
        if match:
            person = unquote(match.group(1))
            ctx = Ctx(match.group(3), user_id(person), "", allow_save=allow_save(req.headers),
                      now=datetime.fromtimestamp(self.now(), UTC))
            return self._dispatch(req, match.group(4), ctx)
        raise SfError(404, NOT_FOUND)


class _RolledBack(Exception):
    """allOrNone: the transaction is rolled back; ``results`` say why, record by record."""

    def __init__(self, results: list[dict]):
        super().__init__("rolled back")
        self.results = results


