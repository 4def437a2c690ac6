"""The broker view from RabbitMQ's management API (answered by a fake HTTP transport): per
queue ready / unacked / consumers, delayed and dead letters beside it, and what needs a
person."""

from __future__ import annotations

import httpx

from workers.config import Settings
from workers.observe.broker import MANAGEMENT, PASSIVE, management_url, read_broker

QUEUES = ["coexist.write.cloud", "coexist.channel.crm", "coexist.command"]


def management(rows: list[dict], *, vhost_exists: bool = True):
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/vhosts/prod":
            return httpx.Response(200 if vhost_exists else 404, json={"name": "prod"})
        if request.url.path == "/api/queues/prod":
            return httpx.Response(200, json=rows)
        return httpx.Response(404)

    return httpx.MockTransport(handle), seen


def settings(**kw) -> Settings:
    return Settings(home="/nonexistent", broker_url="amqp://coexist:s3cret@mq:5672/prod", **kw)


def test_the_management_api_gives_ready_unacked_and_consumers_per_queue():
    transport, seen = management([
        {"name": "coexist.write.cloud", "messages_ready": 3, "messages_unacknowledged": 2,
         "consumers": 4},
        {"name": "coexist.write.cloud.DQ", "messages_ready": 1, "messages_unacknowledged": 0},
        {"name": "coexist.write.cloud.XQ", "messages_ready": 5},
        {"name": "coexist.channel.crm", "messages_ready": 7, "messages_unacknowledged": 0,
         "consumers": 0},
    ])
    view = read_broker(settings(), QUEUES, http_transport=transport)
    assert view.source == MANAGEMENT and view.reachable
    cloud, crm, command = view.queues
    assert (cloud.ready, cloud.unacked, cloud.delayed, cloud.dead, cloud.consumers) == (
        3, 2, 1, 5, 4)
    assert (crm.ready, crm.consumers) == (7, 0)
    assert command.declared is False
    assert view.attention() == ["queue coexist.channel.crm holds 7 message(s) and has no "
                                "consumer"]
    # The AMQP credentials authenticate the API call; they are never shown.
    assert seen[0].headers["authorization"].startswith("Basic ")
    assert "s3cret" not in repr(view.to_dict())


def test_a_missing_vhost_is_an_unreachable_broker():
    transport, _ = management([], vhost_exists=False)
    view = read_broker(settings(), QUEUES, http_transport=transport)
    assert view.reachable is False and view.error == "vhost 'prod' does not exist"
    assert view.attention() == ["broker (COEXIST_BROKER_URL=amqp://coexist:***@mq:5672/prod) "
                                "unreachable: vhost 'prod' does not exist"]


def test_the_management_url_is_derived_from_the_broker_or_switched_off():
    assert management_url(settings()) == "http://mq:15672"
    assert management_url(settings(broker_management_url="https://mq-admin/")) == \
        "https://mq-admin"
    assert management_url(settings(broker_management_url="off")) is None
    assert PASSIVE == "passive declares"
