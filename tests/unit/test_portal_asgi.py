"""``workers.portal.asgi.read_body``: the one body-reading loop of coexist's small ASGI apps."""

from __future__ import annotations

import asyncio

import pytest

from workers.portal.asgi import Disconnected, read_body


def _receive(*messages):
    queue = list(messages)

    async def receive():
        return queue.pop(0)

    return receive


def test_a_body_sent_in_several_messages_is_joined_in_order():
    receive = _receive({"type": "http.request", "body": b'{"a":', "more_body": True},
                       {"type": "http.request", "body": b"", "more_body": True},
                       {"type": "http.request", "body": b"1}", "more_body": False})
    assert asyncio.run(read_body(receive)) == b'{"a":1}'


def test_one_message_without_more_body_is_the_whole_body():
    assert asyncio.run(read_body(_receive({"type": "http.request", "body": b"x"}))) == b"x"


def test_an_empty_request_has_an_empty_body():
    assert asyncio.run(read_body(_receive({"type": "http.request"}))) == b""


def test_a_disconnect_before_the_end_of_the_body_is_no_body():
    receive = _receive({"type": "http.request", "body": b"part", "more_body": True},
                       {"type": "http.disconnect"})
    with pytest.raises(Disconnected, match="after 4 body bytes"):
        asyncio.run(read_body(receive))
