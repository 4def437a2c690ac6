"""The governed API: FastAPI on Starlette, served by uvicorn (``coexist api``).

Routes (all under ``/v1``, bearer credential per consumer, see ``workers.api.auth``):

* ``GET /v1/customers/{key}/credit``: limit, exposure, hold;
* ``GET /v1/prices?customer=&sku=&qty=``: the contract price, its break and validity;
* ``GET /v1/availability?sku=&warehouse=``: on hand, allocated, available to promise;
* ``GET /v1/orders/{key}``: status, lines, shipments, invoices;
* ``POST /v1/orders`` with ``Idempotency-Key``: a portal order to the SoR.

Every answer says which system answered under which flag version (``meta``),
carries ``schema_version``, and the ``X-Correlation-Id`` header (taken from the
request when valid, else new).  Every 4xx/5xx body is one ``Problem`` shape.
Inquiries first try to answer from the cache on the event loop; only a miss
goes to a worker thread to read a SoR.  Every request with a valid credential first
draws from its consumer's rate-limit bucket (``workers.api.limits``: 429 over budget);
inquiries are sampled into the inquiry trace (``workers.api.trace``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bus import context
from coexistence.canonical.models import Order
from coexistence.policy import NotPermitted, Role, check_write
from workers.api import idempotency
from workers.api.auth import Consumer
from workers.api.deps import ApiDeps
from workers.api.edge import EdgeCache
from workers.api.ids import new_correlation_id
from workers.api.limits import Budget, ConsumerLimits, with_headers
from workers.api.schemas import (
    API_SCHEMA_VERSION,
    AvailabilityAnswer,
    CreditAnswer,
    OrderAcceptedAnswer,
    OrderAnswer,
    OrderRequest,
    PriceAnswer,
    Problem,
)
from workers.api.service import ApiError, Miss
from workers.api.sor import SorBadRecord, SorUnavailable
from workers.api.trace import InquiryTrace

log = logging.getLogger(__name__)

CORRELATION_HEADER = "X-Correlation-Id"
_CORRELATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"
#: Longest Idempotency-Key accepted.
MAX_IDEMPOTENCY_KEY = 255

_BEARER = HTTPBearer(auto_error=False, description="One bearer credential per consumer.")
bearer = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]
key_path = Annotated[str, Path(min_length=1, max_length=40, pattern=_KEY_PATTERN)]

_PROBLEM_CONTENT = {"application/problem+json": {
    "schema": {"$ref": "#/components/schemas/Problem"}}}


_RATE_HEADERS = {
    "Retry-After": {"description": "Whole seconds until the consumer's bucket holds a token.",
                    "schema": {"type": "integer", "minimum": 1}},
    "RateLimit-Policy": {"description": 'The consumer\'s budget (draft-ietf-httpapi-'
                         'ratelimit-headers): `"consumer";q=<burst>;w=<seconds to refill>`. '
                         "Sent on every answer to an authenticated consumer.",
                         "schema": {"type": "string"}},
    "RateLimit": {"description": 'What is left: `"consumer";r=<requests left>;t=<seconds>`. '
                  "Sent on every answer to an authenticated consumer.",
                  "schema": {"type": "string"}},
}


def _problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Bad request", 401: "No valid credential", 403: "Not allowed for this consumer",
            404: "Not found (or not visible to this consumer)", 409: "Conflict",
            422: "Refused: the request cannot be processed as sent",
            429: "Over this consumer's rate limit; retry after Retry-After",
            502: "The SoR holds a record that cannot be read",
            503: "A system of record cannot be read now; retry after Retry-After"}
    out: dict[int | str, dict[str, Any]] = {
        c: {"description": text[c], "content": _PROBLEM_CONTENT} for c in (*codes, 429)}
    out[429]["headers"] = _RATE_HEADERS
    return out


def problem_response(status: int, code: str, detail: str, *, field: str | None = None,
                     correlation_id: str | None = None, headers: dict | None = None
                     ) -> JSONResponse:
    body = Problem(type=f"/problems/{code}", title=code.replace("_", " "), status=status,
                   code=code, detail=detail, field=field, correlation_id=correlation_id)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers,
                        media_type="application/problem+json")


class CorrelationMiddleware:
    """Pure ASGI: the correlation id in, into the context, and out on every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-correlation-id":
                given = value.decode("latin-1")
                break
        cid = given if given and _CORRELATION.match(given) else new_correlation_id()
        scope.setdefault("state", {})["correlation_id"] = cid
        token = context.correlation_id.set(cid)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"],
                                      (b"x-correlation-id", cid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            context.correlation_id.reset(token)


def _cid(request: Request) -> str:
    return request.scope.get("state", {}).get("correlation_id") or new_correlation_id()


def parse_idempotency_key(raw: str) -> str:
    """The draft's key is a Structured Field string (``"..."``); a bare token is accepted."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not value or len(value) > MAX_IDEMPOTENCY_KEY or any(
            ord(c) < 0x20 or ord(c) > 0x7E for c in value):
        raise ApiError(400, "idempotency_key_invalid",
                       f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII "
                       "characters (a quoted string)", "Idempotency-Key")
    return value


class GovernedApi(FastAPI):
    """FastAPI with the consumer's rate limit and the warm inquiry path in front
    (``workers.api.limits``, ``workers.api.edge``)."""

    edge: EdgeCache | None = None
    limits: ConsumerLimits | None = None
    inquiry_trace: InquiryTrace | None = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        limits = self.limits
        consumer = None
        verdict = None
        authorization = correlation = None
        for name, value in scope["headers"]:  # one pass for both (the warm path's lookups)
            if name == b"authorization":
                if authorization is None:
                    authorization = value
            elif name == b"x-correlation-id" and correlation is None:
                correlation = value
        if limits is not None and authorization is not None:
            consumer = limits.consumers.authenticate_header(authorization)
            if consumer is not None:
                # In this process (no Redis) the draw needs no coroutine: every request.
                verdict = (limits.draw(consumer) if limits.local
                           else await limits.take(consumer))
                if not verdict.allowed:
                    await limits.refuse(verdict, scope, send)
                    return
        edge = self.edge
        if edge is not None and scope["method"] == "GET" and authorization is not None:
            entry = edge.get(scope, authorization)
            if entry is not None:
                start, body, cid, age = edge.response(
                    entry, correlation, verdict.headers() if verdict is not None else ())
                await send(start)
                await send(body)
                trace = self.inquiry_trace
                if consumer is not None and trace is not None and trace.admit():
                    trace.keep(consumer, scope, 200, edge.meta(entry, age), cid.decode())
                return
        if verdict is not None:
            send = with_headers(send, verdict.headers())
        await super().__call__(scope, receive, send)


def create_app(deps: ApiDeps) -> GovernedApi:
    app = GovernedApi(
        title="coexist governed API", version="1",
        description="Flag-aware inquiry answered by each domain's system of record, and "
                    "portal orders with Idempotency-Key. Every body carries schema_version; "
                    "every error is a Problem.",
        openapi_url="/v1/openapi.json", docs_url=None, redoc_url=None,
    )
    app.add_middleware(CorrelationMiddleware)
    generated = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generated()
        # The Problem shape is referenced by every error response (application/problem+json).
        schema["components"]["schemas"]["Problem"] = Problem.model_json_schema()
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    inquiry = deps.inquiry
    settings = deps.settings
    app.limits = ConsumerLimits(deps.consumers, Budget(settings.rate_per_s, settings.rate_burst),
                                redis_url=settings.redis_url, prefix=settings.redis_prefix)
    app.inquiry_trace = InquiryTrace(deps.state, sample=settings.trace_sample,
                                     max_per_s=settings.trace_max_per_s,
                                     retention_h=settings.trace_retention_h)
    edge = None
    if inquiry.cache.ttl_s > 0:
        edge = app.edge = EdgeCache(inquiry.reader.flags, inquiry.cache.clock)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return problem_response(exc.status, exc.code, exc.detail, field=exc.field,
                                correlation_id=_cid(request), headers=exc.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path",
                                                               "header")]
        field = ".".join(loc) or None
        return problem_response(422, "invalid_request",
                                f"{field or 'request'}: {err.get('msg', 'invalid')}",
                                field=field, correlation_id=_cid(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return problem_response(exc.status_code, code, str(exc.detail),
                                correlation_id=_cid(request))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal_error", "an unexpected error; it is logged "
                                "under this correlation id", correlation_id=_cid(request))

    def consumer_of(credentials: HTTPAuthorizationCredentials | None) -> Consumer:
        consumer = deps.consumers.authenticate(
            f"Bearer {credentials.credentials}" if credentials else None)
        if consumer is None:
            raise ApiError(401, "unauthorized", "a valid bearer credential is required",
                           headers={"WWW-Authenticate": 'Bearer realm="coexist"'})
        return consumer

    def unavailable(exc: SorUnavailable) -> ApiError:
        return ApiError(503, "sor_unavailable",
                        f"the {exc.system} ERP (system of record for {exc.domain}) cannot be "
                        "read now; no answer is better than a wrong one",
                        headers={"Retry-After": str(deps.settings.retry_after_s)})

    async def answer(request: Request, consumer: Consumer, compute) -> dict[str, Any]:
        """Cache-only on the loop; a miss reads the SoR in a worker thread; the whole
        answer is kept for the warm path (``workers.api.edge``) and sampled into the
        inquiry trace."""
        try:
            reads = inquiry.reads(cached_only=True)
            data = compute(reads)
        except Miss:
            def full():
                reads = inquiry.reads(cached_only=False)
                return compute(reads), reads
            try:
                data, reads = await run_in_threadpool(full)
            except SorUnavailable as exc:
                traced(consumer, request, 503, None)
                raise unavailable(exc) from None
            except SorBadRecord as exc:
                raise ApiError(502, "sor_bad_record", str(exc), exc.field) from None
        body = {"schema_version": API_SCHEMA_VERSION, "data": data, "meta": reads.meta()}
        if edge is not None:
            edge.put(request.scope, body)
        traced(consumer, request, 200, body["meta"])
        return body

    def traced(consumer: Consumer, request: Request, status: int, meta) -> None:
        if app.inquiry_trace is not None:
            app.inquiry_trace.record(consumer, request.scope, status, meta, _cid(request))

    def fresh_headers(body: dict[str, Any]) -> dict[str, str]:
        meta = body["meta"]
        return {"Cache-Control": f"max-age={int(meta['max_age_s'])}",
                "Age": str(int(meta["age_s"]))}

    @app.get("/v1/customers/{key}/credit", response_model=CreditAnswer,
             responses=_problems(401, 403, 404, 422, 502, 503), tags=["inquiry"])
    async def credit(request: Request, key: key_path, authorization: bearer = None):
        """Credit limit, exposure and hold of a customer, from the customer domain's SoR."""
        consumer = consumer_of(authorization)
        body = await answer(request, consumer,
                            lambda reads: inquiry.credit(reads, consumer.scope, key))
        return JSONResponse(body, headers=fresh_headers(body))

    @app.get("/v1/prices", response_model=PriceAnswer,
             responses=_problems(401, 403, 404, 422, 502, 503), tags=["inquiry"])
    async def prices(request: Request,
                     customer: Annotated[str, Query(min_length=1, max_length=40,
                                                    pattern=_KEY_PATTERN)],
                     sku: Annotated[str, Query(min_length=1, max_length=40,
                                               pattern=_KEY_PATTERN)],
                     qty: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
                     authorization: bearer = None):
        """The customer's contract price for a SKU and quantity: the break that applies."""
        consumer = consumer_of(authorization)
        body = await answer(request, consumer, lambda reads: inquiry.price(
            reads, consumer.scope, customer, sku, qty))
        return JSONResponse(body, headers=fresh_headers(body))

    @app.get("/v1/availability", response_model=AvailabilityAnswer,
             responses=_problems(401, 403, 404, 422, 502, 503), tags=["inquiry"])
    async def availability(request: Request,
                           sku: Annotated[str, Query(min_length=1, max_length=40,
                                                     pattern=_KEY_PATTERN)],
                           warehouse: Annotated[str | None, Query(
                               min_length=1, max_length=10, pattern=r"^[A-Za-z0-9_-]+$")] = None,
                           authorization: bearer = None):
        """On hand, allocated and available to promise, per warehouse (fields per role)."""
        consumer = consumer_of(authorization)
        body = await answer(request, consumer, lambda reads: inquiry.availability(
            reads, consumer.scope, sku, warehouse))
        return JSONResponse(body, headers=fresh_headers(body))

    @app.get("/v1/orders/{key}", response_model=OrderAnswer,
             responses=_problems(401, 403, 404, 422, 502, 503), tags=["inquiry"])
    async def order(request: Request, key: key_path, authorization: bearer = None):
        """An order with its shipments and invoices, each from its own SoR (pins honoured)."""
        consumer = consumer_of(authorization)
        body = await answer(request, consumer,
                            lambda reads: inquiry.order(reads, consumer.scope, key))
        return JSONResponse(body, headers=fresh_headers(body))

    @app.post("/v1/orders", status_code=201, response_model=OrderAcceptedAnswer,
              responses=_problems(400, 401, 403, 409, 422, 502, 503), tags=["orders"])
    async def place_order(
        request: Request, order: OrderRequest,
        idempotency_key: Annotated[str | None, Header(
            alias="Idempotency-Key", description="A unique key per order (a quoted string, "
            "e.g. a UUID); required. Kept 24 h per account.")] = None,
        authorization: bearer = None,
    ):
        """Place a portal order; it goes to the order domain's SoR, which answers."""
        consumer = consumer_of(authorization)
        if consumer.role is not Role.PORTAL:
            raise ApiError(403, "forbidden", f"role {consumer.role} may not place orders")
        if idempotency_key is None:
            raise ApiError(400, "idempotency_key_missing",
                           "POST /v1/orders requires an Idempotency-Key header "
                           "(see the API documentation)", "Idempotency-Key")
        key = parse_idempotency_key(idempotency_key)
        raw = json.loads(await request.body())
        try:
            check_write(consumer.scope, "order", raw)
        except NotPermitted as exc:
            raise ApiError(403, "forbidden", str(exc), exc.path) from None
        fingerprint = hashlib.sha256(
            json.dumps(raw, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        cid = _cid(request)
        return await run_in_threadpool(_place, deps, consumer, key, fingerprint,
                                       order.model_dump(mode="python"), cid, unavailable)

    return app


#: The order key an order is built under before the claim gives it its number.
_UNNUMBERED = "0"


def _place(deps: ApiDeps, consumer: Consumer, key: str, fingerprint: str,
           request: dict[str, Any], cid: str, unavailable) -> JSONResponse:
    """One portal order: built from SoR reads first (no state transaction open), then
    claimed with its command (or its refusal as the stored answer) in one transaction,
    written into the SoR, and its answer stored: two state transactions when accepted,
    one when refused.  A key already claimed (replay, in flight, a resumed execution)
    keeps what its first request stored; the order built here is then discarded."""
    account = consumer.idempotency_account
    now = deps.now()
    built: Order | None = None
    refusal: tuple[int, str] | None = None
    try:
        built = deps.intake.build(request, order_key=_UNNUMBERED, ordered_at=now)
    except ApiError as exc:
        refusal = (exc.status, problem_response(exc.status, exc.code, exc.detail,
                                                field=exc.field, correlation_id=cid
                                                ).body.decode())
    except SorUnavailable:
        pass  # claimed first (a replay needs no SoR), then built as a resumed one is
    numbered: dict[str, Order] = {}

    def command(order_key: str) -> str:
        numbered[order_key] = record = built.model_copy(update={"key": order_key})
        return record.model_dump_json()

    try:
        claim = idempotency.begin(
            deps.state, account, key, fingerprint, correlation_id=cid,
            order_number_base=deps.settings.order_number_base, now=now,
            ttl_s=deps.settings.idempotency_ttl_s,
            command=command if built is not None else None, answer=refusal)
    except idempotency.KeyReused:
        raise ApiError(422, "idempotency_key_reused",
                       "this Idempotency-Key was used for a different order; use a new key",
                       "Idempotency-Key") from None
    except idempotency.InFlight:
        raise ApiError(409, "idempotency_key_in_flight",
                       "the first request with this Idempotency-Key is still being processed; "
                       "retry later", "Idempotency-Key", headers={"Retry-After": "1"}) from None
    if isinstance(claim, idempotency.Answered):
        return JSONResponse(json.loads(claim.body), status_code=claim.status,
                            media_type=_media(claim.status))
    if isinstance(claim, idempotency.Replay):
        return JSONResponse(json.loads(claim.body), status_code=claim.status,
                            headers={"Idempotent-Replayed": "true"},
                            media_type=_media(claim.status))
    try:
        record = numbered.get(claim.order_key) if claim.command is not None else None
        if record is None and claim.command is not None:
            record = Order.model_validate_json(claim.command)
        elif record is None:
            # A resumed execution whose first request stored no command (it stopped before
            # building): built now, at its first time, and kept before it is written.
            record = deps.intake.build(request, order_key=claim.order_key,
                                       ordered_at=claim.created_at)
            idempotency.save_command(deps.state, account, key, record.model_dump_json())
        accepted = deps.intake.write(record, message_id=claim.message_id,
                                     correlation_id=claim.correlation_id)
    except ApiError as exc:
        problem = problem_response(exc.status, exc.code, exc.detail, field=exc.field,
                                   correlation_id=claim.correlation_id)
        idempotency.finish(deps.state, account, key, exc.status, problem.body.decode())
        return problem
    except SorUnavailable as exc:
        idempotency.release(deps.state, account, key)
        raise unavailable(exc) from None
    except BaseException:
        idempotency.release(deps.state, account, key)
        raise
    body = {"schema_version": API_SCHEMA_VERSION, "data": accepted,
            "correlation_id": claim.correlation_id}
    idempotency.finish(deps.state, account, key, 201, json.dumps(body))
    return JSONResponse(body, status_code=201,
                        headers={"Location": f"/v1/orders/{accepted['order_key']}"})


def _media(status: int) -> str:
    return "application/problem+json" if status >= 400 else "application/json"
