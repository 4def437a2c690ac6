"""ASGI helpers shared by coexist's own small HTTP apps (the demo's webhook receiver in
``workers.portal.flow``, the test and chaos-run receivers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


class Disconnected(Exception):
    """The client went away before its request's body was complete (a sender killed
    mid-request): there is no whole body to verify and nobody to answer."""


async def read_body(receive: Receive) -> bytes:
    """The whole request body: every ``http.request`` message's ``body`` until one says
    ``more_body`` is false.  A client that disconnects first (``http.disconnect``) raises
    :class:`Disconnected`: a truncated body would fail its signature check and be counted
    as a bad delivery, although the sender never finished sending it (and retries it)."""
    chunks = []
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            raise Disconnected(f"client left after {sum(map(len, chunks))} body bytes")
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
