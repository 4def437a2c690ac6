"""A small HTTP/1.1 server on a bare ``asyncio.Protocol``.

Why not uvicorn + starlette: without httptools/uvloop installed, uvicorn's
pure-Python h11 path costs several times more per request than this parser,
and the simulator must not be the bottleneck of end-to-end benchmarks.  Owning
the socket also makes the faults exact: a response can be cut off after its
headers and half its body (``after="drop"``) or never sent (``after="hang"``)
once the write it answers has been committed.

Scope is what API clients send: ``Content-Length`` bodies (chunked request
bodies are refused with 411), keep-alive and pipelining, chunked responses for
streams with flow control so a slow reader never makes the server buffer a
whole export.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

#: Largest request head (request line + headers) accepted.
MAX_HEAD_BYTES = 64 * 1024
#: Largest request body accepted (a $batch of 200 orders is well under 1 MB).
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    #: Header names lower-cased.
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    #: Sent with chunked encoding instead of ``body`` when set.
    stream: Iterator[bytes] | None = None
    #: A fault to commit after handling: ``"drop"`` (cut mid-response) or ``"hang"``.
    after: str | None = None
    #: Seconds a ``"hang"`` holds the connection before closing it unanswered.
    hang_s: float = 30.0


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class HttpProtocol(asyncio.Protocol):
    """One client connection: parse requests, answer them in order."""

    def __init__(self, handler: Handler):
        self.handler = handler
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.pending: deque[Request] = deque()
        self.busy = False
        self.closed = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.lost = asyncio.Event()

    # ----------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def connection_lost(self, exc):  # type: ignore[override]
        self.closed = True
        self.lost.set()
        self.can_write.set()

    def pause_writing(self):
        self.can_write.clear()

    def resume_writing(self):
        self.can_write.set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            while (request := self._parse()) is not None:
                self.pending.append(request)
        except _BadRequest as exc:
            self._refuse(exc.status, str(exc))
            return
        if self.pending and not self.busy:
            self.busy = True
            asyncio.get_running_loop().create_task(self._serve())

    # ----------------------------------------------------------------- parsing

    def _parse(self) -> Request | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise _BadRequest(431, "request head too large")
            return None
        head = bytes(self.buffer[:end]).decode("latin-1")
        lines = head.split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError:
            raise _BadRequest(400, "malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(400, f"malformed header line {line!r}")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            raise _BadRequest(411, "chunked request bodies are not supported; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _BadRequest(400, "Content-Length is not a number") from None
        if length > MAX_BODY_BYTES:
            raise _BadRequest(413, f"body over {MAX_BODY_BYTES} bytes")
        start = end + 4
        if len(self.buffer) < start + length:
            return None
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        raw_path, _, raw_query = target.partition("?")
        query = dict(parse_qsl(raw_query, keep_blank_values=True))
        return Request(method.upper(), unquote(raw_path), query, headers, body)

    # ----------------------------------------------------------------- answering

    async def _serve(self) -> None:
        try:
            while self.pending and not self.closed:
                request = self.pending.popleft()
                response = await self.handler(request)
                keep = request.headers.get("connection", "").lower() != "close"
                if not await self._send(response, keep):
                    return
        finally:
            self.busy = False

    async def _send(self, response: Response, keep_alive: bool) -> bool:
        if self.closed or self.transport is None:
            return False
        transport = self.transport
        if response.after == "hang":
            # No answer: the client times out.  Close eventually so sockets do not leak.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.lost.wait(), response.hang_s)
            transport.abort()
            return False
        head = [f"HTTP/1.1 {response.status} {_reason(response.status)}"]
        head.append(f"Content-Type: {response.content_type}")
        head.extend(f"{k}: {v}" for k, v in response.headers)
        if response.stream is None:
            head.append(f"Content-Length: {len(response.body)}")
        else:
            head.append("Transfer-Encoding: chunked")
        if not keep_alive:
            head.append("Connection: close")
        raw_head = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if response.after == "drop":
            # Headers and half the body (a stream: its first chunk), then a reset:
            # the client cannot tell whether the write it sent was applied, and a
            # reader of a stream has to resume.
            if response.stream is None:
                transport.write(raw_head + response.body[: len(response.body) // 2])
            else:
                first = next(iter(response.stream), b"")
                chunk = b"%x\r\n%b\r\n" % (len(first), first) if first else b""
                transport.write(raw_head + chunk)
            transport.abort()
            return False
        if response.stream is None:
            transport.write(raw_head + response.body)
        else:
            transport.write(raw_head)
            for chunk in response.stream:
                if not chunk:
                    continue
                await self.can_write.wait()
                if self.closed:
                    return False
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            transport.write(b"0\r\n\r\n")
        if not keep_alive:
            transport.close()
            return False
        return True

    def _refuse(self, status: int, message: str) -> None:
        body = json.dumps({"error": {"code": "BadRequest", "message": message}}).encode()
        if self.transport is not None:
            self.transport.write(
                f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + body
            )
            self.transport.close()


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


async def serve(handler: Handler, host: str, port: int) -> asyncio.Server:
    """Listen on ``host:port`` (0 = a free port) and answer with ``handler``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpProtocol(handler), host, port, backlog=512)
