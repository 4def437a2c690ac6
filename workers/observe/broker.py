"""What the broker holds, per queue: ready, unacked, delayed, dead letters, consumers.

One reader for ``coexist status``, ``coexist cutover status`` (and the console later):
``read_broker(settings, queues)`` returns a ``BrokerView`` that says where its figures
came from, because RabbitMQ and the embedded broker can tell different things:

* **RabbitMQ, management API** (``COEXIST_BROKER_MANAGEMENT_URL``, default the broker's
  host on port 15672 with the AMQP credentials): ready, unacked and consumers per queue,
  the ``.DQ`` (delayed retries) and ``.XQ`` (dead letters) queues beside it (its figures
  are sampled by RabbitMQ, every 5 s by default);
* **RabbitMQ, passive declares** when the management API does not answer: ready and
  consumers per queue (``queue_declare(passive=True)``); unacked is unknown;
* **embedded broker**: its own tables, read-only (``bus_queue`` rows by lease state,
  ``bus_dead_letters``, and consumers from ``bus_consumer`` heartbeats).

Nothing is created: a queue nobody declared yet is shown as not declared.  A broker that
cannot be reached (closed port, wrong credentials, missing vhost) is ``reachable=False``
with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from workers.config import Settings, redact_url
from workers.errors import first_line

#: Seconds any one broker request may take in a report.
BROKER_PROBE_TIMEOUT_S = 3.0
#: Port of the RabbitMQ management API when only the AMQP URL is configured.
MANAGEMENT_PORT = 15672

MANAGEMENT = "management API"
PASSIVE = "passive declares"
EMBEDDED = "embedded broker tables"


@dataclass
class QueueView:
    """One queue as the broker sees it; ``None`` where the source cannot tell."""

    name: str
    declared: bool = True
    ready: int | None = None
    unacked: int | None = None
    delayed: int | None = None
    dead: int | None = None
    consumers: int | None = None

    @property
    def held(self) -> int:
        """Messages waiting or in flight (ready, unacked, delayed) as far as known."""
        return sum(n or 0 for n in (self.ready, self.unacked, self.delayed))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "held": self.held}


@dataclass
class BrokerView:
    kind: str
    url: str
    queue_type: str
    source: str
    reachable: bool = True
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    queues: list[QueueView] = field(default_factory=list)

    def queue(self, name: str) -> QueueView | None:
        return next((q for q in self.queues if q.name == name), None)

    def attention(self) -> list[str]:
        """Reasons a person should look: an unreachable broker, messages nobody consumes."""
        if not self.reachable:
            setting = "COEXIST_BROKER_URL" if self.kind == "rabbitmq" else "COEXIST_HOME"
            return [f"broker ({setting}={self.url}) unreachable: {self.error}"]
        out = []
        for q in self.queues:
            if q.held and q.consumers == 0:
                out.append(f"queue {q.name} holds {q.held} message(s) and has no consumer")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "url": self.url, "queue_type": self.queue_type,
                "source": self.source, "reachable": self.reachable, "error": self.error,
                "notes": self.notes, "queues": [q.to_dict() for q in self.queues]}


def read_broker(settings: Settings, queues: list[str], *,
                http_transport: Any = None) -> BrokerView:
    """The queues ``queues`` as the configured broker holds them (never raises).
    ``http_transport`` replaces the management API's HTTP transport (tests)."""
    if settings.broker_url:
        return _rabbitmq(settings, queues, http_transport)
    return _embedded(settings, queues)


# ---------------------------------------------------------------------- embedded


def _embedded(settings: Settings, queues: list[str]) -> BrokerView:
    from bus.brokers.sqlite import CONSUMER_HEARTBEAT_MS

    path = settings.bus_path
    view = BrokerView("embedded", str(path), "sqlite", EMBEDDED)
    if not path.is_file():
        view.notes.append(f"no embedded broker file at {path} yet (no coexist process has "
                          "started with this COEXIST_HOME)")
        view.queues = [QueueView(q, declared=False, ready=0, unacked=0, delayed=0, dead=0)
                       for q in queues]
        return view
    now = int(time.time() * 1000)
    try:
        conn = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True,
                               timeout=BROKER_PROBE_TIMEOUT_S)
    except sqlite3.Error as exc:
        view.reachable, view.error = False, first_line(exc)
        return view
    try:
        live = {row[0]: row[1:] for row in conn.execute(
            "SELECT queue_name,"
            " sum(CASE WHEN visible_at_ms <= ? THEN 1 ELSE 0 END),"
            " sum(CASE WHEN visible_at_ms > ? AND lease_owner IS NOT NULL THEN 1 ELSE 0 END),"
            " sum(CASE WHEN visible_at_ms > ? AND lease_owner IS NULL THEN 1 ELSE 0 END)"
            " FROM bus_queue GROUP BY queue_name", (now, now, now))}
        dead = dict(conn.execute(
            "SELECT queue_name, count(*) FROM bus_dead_letters GROUP BY queue_name"))
        try:
            consumers = dict(conn.execute(
                "SELECT queue_name, count(*) FROM bus_consumer WHERE seen_at_ms > ?"
                " GROUP BY queue_name", (now - 3 * CONSUMER_HEARTBEAT_MS,)))
        except sqlite3.OperationalError:  # a file from before consumers were noted
            consumers = None
            view.notes.append("this embedded broker file does not record consumers")
    except sqlite3.Error as exc:
        view.reachable, view.error = False, first_line(exc)
        return view
    finally:
        conn.close()
    for name in queues:
        ready, unacked, delayed = live.get(name, (0, 0, 0))
        view.queues.append(QueueView(
            name, ready=int(ready or 0), unacked=int(unacked or 0), delayed=int(delayed or 0),
            dead=int(dead.get(name, 0)),
            consumers=None if consumers is None else int(consumers.get(name, 0))))
    return view


# ---------------------------------------------------------------------- RabbitMQ


def management_url(settings: Settings) -> str | None:
    """The management API's base URL, or ``None`` when switched ``off``."""
    configured = settings.broker_management_url
    if configured and configured.strip().lower() == "off":
        return None
    if configured:
        return configured.rstrip("/")
    parts = urlsplit(_first_node(settings.broker_url or ""))
    scheme = "https" if parts.scheme == "amqps" else "http"
    return f"{scheme}://{parts.hostname or '127.0.0.1'}:{MANAGEMENT_PORT}"


def _first_node(url: str) -> str:
    """The first node's URL of a cluster's comma-separated list (the only one of one URL)."""
    from bus.brokers import split_broker_urls

    try:
        return split_broker_urls(url)[0]
    except ValueError:
        return url


def _amqp_credentials(url: str) -> tuple[str, str, str]:
    parts = urlsplit(_first_node(url))
    vhost = unquote(parts.path[1:]) if parts.path not in ("", "/") else "/"
    return unquote(parts.username or "guest"), unquote(parts.password or "guest"), vhost


def _rabbitmq(settings: Settings, queues: list[str], http_transport: Any) -> BrokerView:
    view = BrokerView("rabbitmq", redact_url(settings.broker_url), settings.queue_type, PASSIVE)
    api = management_url(settings)
    if api is not None:
        try:
            view.queues = _from_management(api, settings.broker_url or "", queues,
                                           http_transport)
            view.source = MANAGEMENT
            return view
        except _VhostMissing as exc:
            view.reachable, view.error = False, str(exc)
            return view
        except Exception as exc:  # noqa: BLE001 - fall back to passive declares, say why
            view.notes.append(f"management API at {redact_url(api)} did not answer "
                              f"({first_line(exc)}); unacked counts unknown")
    try:
        view.queues = _from_passive_declares(settings.broker_url or "", queues)
    except Exception as exc:  # noqa: BLE001 - unreachable broker: say so, never raise
        view.reachable, view.error = False, first_line(exc)
    return view


class _VhostMissing(Exception):
    pass


def _from_management(api: str, amqp_url: str, queues: list[str],
                     transport: Any = None) -> list[QueueView]:
    import httpx

    user, password, vhost = _amqp_credentials(amqp_url)
    with httpx.Client(base_url=api, auth=(user, password), timeout=BROKER_PROBE_TIMEOUT_S,
                      transport=transport) as client:
        response = client.get(f"/api/vhosts/{quote(vhost, safe='')}")
        if response.status_code == 404:
            raise _VhostMissing(f"vhost {vhost!r} does not exist")
        response.raise_for_status()
        response = client.get(f"/api/queues/{quote(vhost, safe='')}",
                              params={"columns": "name,messages_ready,"
                                                 "messages_unacknowledged,consumers"})
        response.raise_for_status()
        rows = {q["name"]: q for q in response.json()}

    def count(name: str, column: str) -> int | None:
        row = rows.get(name)
        return None if row is None else int(row.get(column) or 0)

    out = []
    for name in queues:
        row = rows.get(name)
        if row is None:
            out.append(QueueView(name, declared=False))
            continue
        delayed = (count(f"{name}.DQ", "messages_ready") or 0) + (
            count(f"{name}.DQ", "messages_unacknowledged") or 0)
        out.append(QueueView(
            name, ready=int(row.get("messages_ready") or 0),
            unacked=int(row.get("messages_unacknowledged") or 0), delayed=delayed,
            dead=count(f"{name}.XQ", "messages_ready"), consumers=int(row.get("consumers") or 0)))
    return out


@contextlib.contextmanager
def _quiet(logger_name: str):
    """pika logs every failed connection attempt as ERROR with a traceback; a report that
    says "unreachable" in one line must not print them too."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _from_passive_declares(amqp_url: str, queues: list[str]) -> list[QueueView]:
    with _quiet("pika"):
        return _passive(amqp_url, queues)


def _passive(amqp_url: str, queues: list[str]) -> list[QueueView]:
    import pika
    import pika.exceptions

    from bus.brokers import connection_parameters

    nodes = connection_parameters(amqp_url, shuffle=False)  # a cluster: the first that answers
    for params in nodes:
        params.connection_attempts = 1
        params.retry_delay = 0
        params.socket_timeout = BROKER_PROBE_TIMEOUT_S
        params.stack_timeout = BROKER_PROBE_TIMEOUT_S * 2
        params.blocked_connection_timeout = BROKER_PROBE_TIMEOUT_S
    connection = pika.BlockingConnection(nodes)
    try:
        channel = connection.channel()

        def declare(name: str):
            nonlocal channel
            try:
                return channel.queue_declare(name, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                channel = connection.channel()
                return None

        out = []
        for name in queues:
            method = declare(name)
            if method is None:
                out.append(QueueView(name, declared=False))
                continue
            dq, xq = declare(f"{name}.DQ"), declare(f"{name}.XQ")
            out.append(QueueView(name, ready=method.message_count,
                                 delayed=dq.message_count if dq else None,
                                 dead=xq.message_count if xq else None,
                                 consumers=method.consumer_count))
        return out
    finally:
        if connection.is_open:
            connection.close()
