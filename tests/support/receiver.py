"""A real webhook receiver on loopback: an ASGI app under uvicorn in a thread.

Each path is a mailbox with a script of answers: ``receiver.script("/a", [500, 200])``
makes the first POST to ``/a`` answer 500 and every later one 200 (the last entry
repeats).  An answer is a status code, ``(status, headers)``, or ``"hang"`` (hold
the request until ``release()`` or the server stops - a timeout for the client).
Every request is kept (headers lower-cased, raw body) for assertions.

``serving()`` runs one on loopback for a ``with`` block (the portal tests' ``receiver``
fixture); ``step()`` is one dispatcher round and the wait for its deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from workers.portal.asgi import Disconnected, read_body


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    _scripts: dict[str, list] = field(default_factory=dict)
    _served: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _release: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def script(self, path: str, answers: list) -> str:
        with self._lock:
            self._scripts[path] = list(answers)
        return self.url(path)

    def release(self) -> None:
        self._release.set()

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 10.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.at(path)) >= count, timeout_s)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        try:
            body = await read_body(receive)
        except Disconnected:
            return  # the sender died mid-request; it sends the whole request again
        path = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            self.requests.append(Received(path, headers, body))
            script = self._scripts.get(path, [200])
            n = self._served[path]
            self._served[path] += 1
            answer = script[min(n, len(script) - 1)]
        with self.arrived:
            self.arrived.notify_all()
        if answer == "hang":
            while not self._release.is_set():
                await asyncio.sleep(0.02)
            answer = 200
        status, extra = (answer, {}) if isinstance(answer, int) else answer
        head = [(b"content-type", b"text/plain")]
        head += [(k.lower().encode(), str(v).encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": head})
        await send({"type": "http.response.body", "body": b"ok"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an ASGI app under uvicorn on a loopback port until ``stop()``."""

    def __init__(self, app, port: int | None = None) -> None:
        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                return self
            threading.Event().wait(0.01)
        raise RuntimeError("uvicorn did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@contextlib.contextmanager
def serving(receiver: Any = None) -> Iterator[Any]:
    """``receiver`` (a new ``Receiver`` unless given) served on loopback until the block
    ends; its ``port`` is set, a held (``"hang"``) request is released before the stop."""
    rec = receiver if receiver is not None else Receiver()
    server = ServerThread(rec).start()
    rec.port = server.port
    try:
        yield rec
    finally:
        release = getattr(rec, "release", None)
        if release is not None:
            release()
        server.stop()


def step(dispatcher, now=None, timeout_s: float = 10.0) -> int:
    """One round of a portal ``Dispatcher`` at ``now``, waiting for what it started."""
    started = dispatcher.run_once(now)
    assert dispatcher.wait(timeout_s)
    return started


async def read_request(scope, receive) -> tuple[bytes, dict[str, str]] | None:
    """An ASGI request's body and lower-cased headers; ``None`` when its sender died
    mid-body (it sends the whole request again)."""
    try:
        body = await read_body(receive)
    except Disconnected:
        return None
    return body, {k.decode().lower(): v.decode() for k, v in scope["headers"]}


@dataclass
class WebhookInbox:
    """What a well-behaved webhook receiver keeps: every delivery's Standard Webhooks
    signature verified, each ``webhook-id`` applied once (a second delivery of an id is
    a duplicate: acknowledged, not applied again)."""

    #: webhook-id -> deliveries that verified (1 = once).
    ids: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: Deliveries whose signature did not verify, with why.
    bad: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, verifier: Any, body: bytes, headers: dict[str, str], where: str = ""
             ) -> str | None:
        """The delivery's webhook-id when it is new, else ``None`` (a duplicate, or a bad
        signature: see ``bad``).  ``verifier`` is a ``standardwebhooks.Webhook``."""
        try:
            verifier.verify(body, headers)
        except Exception as exc:  # noqa: BLE001 - a failed verification is the finding
            with self.lock:
                self.bad.append(f"{where}: {exc} ({len(body)} body bytes, "
                                f"content-length {headers.get('content-length')})")
            raise BadSignature from None
        wid = headers.get("webhook-id", "")
        with self.lock:
            self.ids[wid] += 1
            return wid if self.ids[wid] == 1 else None

    @property
    def received(self) -> int:
        with self.lock:
            return sum(self.ids.values())

    @property
    def duplicates(self) -> int:
        with self.lock:
            return sum(n - 1 for n in self.ids.values())


class BadSignature(Exception):
    """A delivery whose signature did not verify (recorded in ``WebhookInbox.bad``)."""
