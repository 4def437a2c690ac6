"""The cutover console: one read-only page and the JSON endpoints behind it (Starlette).

``create_app(app)`` serves, for the composition root's ``App``:

* ``/`` the page (``workers.console.page``: server-rendered HTML, one small script that polls
  the endpoints below and draws the charts as inline SVG; no build step, no CDN);
* ``/api/status``, ``/api/board``, ``/api/exceptions/groups``, ``/api/exceptions?group=G``,
  ``/api/exceptions/{id}``, ``/api/trace?target=T``, ``/api/history``, ``/api/kpis``,
  ``/api/channels`` (``workers.console.data``: the same dicts the CLI prints as JSON).

History of backlog and lag per queue is kept by this process (``Sampler``: one sample every
``sample_s`` into a bounded ring, in memory, for ``history_hours``): a console started a minute
ago shows a minute.  Drift over time and routed changes per minute come from the state
database, so they cover the whole stored history.

Auth: none on loopback; bound elsewhere, ``COEXIST_CONSOLE_TOKEN`` is required (the CLI
refuses to start without it) and every request must carry it, as a bearer token or as the
password of HTTP basic auth (what a browser asks for).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
from collections import deque
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from workers.console import data
from workers.console.page import PAGE

log = logging.getLogger(__name__)

#: Seconds between two history samples of the queues and capture lag.
SAMPLE_S = 15.0
#: Hours of samples kept in memory.
HISTORY_HOURS = 6.0


class _Json(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=str, separators=(",", ":")).encode()


class Sampler:
    """Backlog and consumers per queue and capture lag per ERP, sampled by this process."""

    def __init__(self, app, *, sample_s: float = SAMPLE_S,
                 history_hours: float = HISTORY_HOURS) -> None:
        self.app = app
        self.sample_s = sample_s
        self.samples: deque[dict[str, Any]] = deque(
            maxlen=max(2, int(history_hours * 3600 / max(sample_s, 0.1))))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, report: dict[str, Any] | None = None) -> dict[str, Any]:
        report = report if report is not None else data.status(self.app)
        queues = {q["name"]: {"held": q.get("held"), "consumers": q.get("consumers")}
                  for q in report["broker"].get("queues", [])}
        point = {"at": report["at"], "queues": queues,
                 "capture_lag": {c["system"]: c.get("lag") for c in report["capture"]},
                 "outbox_backlog": report["outbox"]["backlog"]}
        with self._lock:
            self.samples.append(point)
        return point

    def history(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.samples)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="console-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as exc:  # a source down is shown by the page; keep sampling
                log.warning("console sample failed: %s", exc)
            self._stop.wait(self.sample_s)


def _authorized(request: Request, token: str | None) -> bool:
    if not token:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    given = ""
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip()).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


def create_app(app, *, token: str | None = None, sampler: Sampler | None = None,
               refresh_s: float = 5.0) -> _Guarded:
    """The console over a composition root ``App``; ``sampler`` keeps the queue history."""
    sampler = sampler or Sampler(app)

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.replace("__REFRESH_MS__", str(int(refresh_s * 1000))))

    def status(request: Request) -> Response:
        return _Json(data.status(app))

    def board(request: Request) -> Response:
        report = data.status(app)
        return _Json({"at": report["at"], "ok": report["ok"], "attention": report["attention"],
                      "domains": data.board(app, report)})

    def groups(request: Request) -> Response:
        return _Json(data.exception_groups(app, _status_filter(request)))

    def records(request: Request) -> Response:
        group = request.query_params.get("group") or None
        return _Json(data.exceptions(app, group, _status_filter(request)))

    def detail(request: Request) -> Response:
        try:
            record_id = int(request.path_params["record_id"])
        except ValueError:
            return _Json({"error": "the record id must be a number"}, status_code=400)
        out = data.exception_detail(app, record_id)
        if out is None:
            return _Json({"error": f"no exception record {record_id}"}, status_code=404)
        return _Json(out)

    def trace(request: Request) -> Response:
        from workers.observe import TraceInputError

        target = (request.query_params.get("target") or "").strip()
        if not target:
            return _Json({"error": "give a domain:key or a correlation id"}, status_code=400)
        try:
            return _Json(data.trace(app, target))
        except (TraceInputError, ValueError) as exc:
            return _Json({"error": str(exc)}, status_code=400)

    def history(request: Request) -> Response:
        return _Json({"queues": sampler.history(), "sample_s": sampler.sample_s,
                      "drift": data.drift_history(app.state),
                      "routed_per_minute": data.routed_per_minute(app.state)})

    def kpis(request: Request) -> Response:
        return _Json(data.kpis(app))

    def channels(request: Request) -> Response:
        return _Json(data.channels(app))

    routes = [
        Route("/", page), Route("/api/status", status), Route("/api/board", board),
        Route("/api/exceptions/groups", groups), Route("/api/exceptions", records),
        Route("/api/exceptions/{record_id}", detail), Route("/api/trace", trace),
        Route("/api/history", history), Route("/api/kpis", kpis),
        Route("/api/channels", channels),
    ]
    return _Guarded(Starlette(routes=routes), token)


class _Guarded:
    """ASGI wrapper: the token check on every request, and no caching of any answer."""

    def __init__(self, inner: Starlette, token: str | None) -> None:
        self.inner = inner
        self.token = token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        if not _authorized(Request(scope), self.token):
            response = Response("authentication required", status_code=401,
                                headers={"WWW-Authenticate": 'Basic realm="coexist console"'})
            await response(scope, receive, send)
            return

        async def no_store(message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).append((b"cache-control", b"no-store"))
            await send(message)

        await self.inner(scope, receive, no_store)


def _status_filter(request: Request) -> str | None:
    value = request.query_params.get("status", "open")
    return None if value == "all" else value
