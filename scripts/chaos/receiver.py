"""The chaos run's webhook receiver: a customer's endpoint on loopback (an ASGI app under
uvicorn in a thread of the run's script, not coexist code).

``/hook`` is a well-behaved receiver as the README asks one to be: it verifies each
Standard Webhooks signature with the endpoint's secret, dedupes on ``webhook-id`` (a second
delivery of one id is counted as a duplicate, answered 200 and not applied again) and, per
object, applies only a higher ``data.version`` than it holds, so it ends equal to the SoR.

``/gone`` is an endpoint the customer took down: its first request hangs past the
dispatcher's timeout, every later one answers 410 Gone (coexist must disable the endpoint
and dead-letter what it could not deliver there, never retry it for ever).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from dataclasses import dataclass, field

from tests.support.receiver import BadSignature, WebhookInbox, read_request

#: Seconds the gone endpoint's first request hangs (beyond the dispatcher's --timeout-s).
HANG_S = 6.0


@dataclass
class Held:
    """The newest state of one object the receiver applied."""

    version: int
    record: dict
    deleted: bool
    event_type: str


@dataclass
class ChaosReceiver:
    secret: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Signatures verified, each webhook-id applied once (``tests.support.receiver``).
    inbox: WebhookInbox = field(default_factory=WebhookInbox)
    #: (event type, object key) -> the newest state applied.
    objects: dict[tuple[str, str], Held] = field(default_factory=dict)
    #: Deliveries whose version was older than what the receiver held (not applied).
    older: int = 0
    gone_requests: int = 0
    gone_answers: Counter = field(default_factory=Counter)
    #: Deliveries applied (a newer version than held), by event type.
    applied: Counter = field(default_factory=Counter)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        request = await read_request(scope, receive)
        if request is None:
            return
        body, headers = request
        if scope["path"] == "/gone":
            with self.lock:
                self.gone_requests += 1
                first = self.gone_requests == 1
            if first:
                await asyncio.sleep(HANG_S)
            status = 504 if first else 410
            with self.lock:
                self.gone_answers[status] += 1
            return await _answer(send, status)
        status = self.apply(body, headers)
        return await _answer(send, status)

    def apply(self, body: bytes, headers: dict[str, str]) -> int:
        from standardwebhooks import Webhook

        try:
            wid = self.inbox.take(Webhook(self.secret), body, headers, "/hook")
        except BadSignature:
            return 400
        if wid is None:
            return 200  # a duplicate delivery: acknowledged, not applied again
        event = json.loads(body)
        data = event.get("data") or {}
        key = (event.get("type", ""), str(data.get("key")))
        with self.lock:
            held = self.objects.get(key)
            version = int(data.get("version") or 0)
            if held is not None and version <= held.version:
                self.older += 1
                return 200
            self.objects[key] = Held(version, data.get("record") or {},
                                     bool(data.get("deleted")), key[0])
            self.applied[key[0]] += 1
        return 200

    def figures(self) -> dict:
        with self.lock:
            return {"delivered": len(self.inbox.ids),
                    "duplicates_by_id": self.inbox.duplicates,
                    "bad_signatures": len(self.inbox.bad), "older_not_applied": self.older,
                    "objects": len(self.objects), "gone_requests": self.gone_requests,
                    "applied_by_type": dict(self.applied),
                    "gone_answers": {str(k): v for k, v in self.gone_answers.items()}}


async def _answer(send, status: int) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})


class Serving:
    """``ChaosReceiver`` under uvicorn on a loopback port until ``stop()``."""

    def __init__(self, receiver: ChaosReceiver, port: int):
        import uvicorn

        self.receiver, self.port = receiver, port
        config = uvicorn.Config(receiver, host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True,
                                       name="webhook-receiver")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def start(self) -> Serving:
        import time

        self.thread.start()
        for _ in range(1000):
            if self.server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("the webhook receiver did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
