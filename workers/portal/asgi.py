"""ASGI helpers shared by coexist's own small HTTP apps (the demo's webhook receiver in
``workers.portal.flow``, the test receivers)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Receive = Callable[[], Awaitable[dict[str, Any]]]


async def read_body(receive: Receive) -> bytes:
    """The whole request body: every ``http.request`` message's ``body`` until one says
    ``more_body`` is false.  A client that disconnects first (``http.disconnect``, which
    has neither key) ends it with what arrived."""
    chunks = []
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if chunk:
            chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
