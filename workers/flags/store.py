"""Where flag values live: SQL alone (embedded default) or Redis in front of SQL.

Both stores commit every change to the SQL audit first (the source of truth),
so a change that is not audited never takes effect.

* ``SqlFlagStore``: the flags are the audit's newest rows; processes notice a
  change by polling the audit's newest id (one indexed ``max`` per poll).
* ``RedisFlagStore``: after the audit commit, the new state is written to one
  Redis hash and published on a channel, atomically and only if newer (a Lua
  script), so every process's cache hears of it within milliseconds.  If Redis
  was flushed or missed a write, ``restore`` copies the audit's states back.

Each store offers ``watch(apply, stop)``, run by ``FlagCache`` in a thread, that
calls ``apply(states)`` with every state it learns of until ``stop`` is set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from sqlalchemy import Engine

from bus.errors import TechnicalError
from coexistence.flags import FlagState, initial_flags
from workers.flags.audit import AuditEntry, FlagAuditLog

log = logging.getLogger(__name__)

#: How often the SQL store's watchers poll the audit's change counter.
SQL_POLL_S = 0.2
#: How often a Redis watcher re-reads the whole hash, to heal a missed message or a flush.
REDIS_REFRESH_S = 2.0
#: How often a Redis watcher compares the audit's change counter with what it has seen, to
#: re-publish a change whose Redis write failed after its audit commit.
REDIS_AUDIT_CHECK_S = 10.0
#: Wait before reconnecting after Redis went away.
REDIS_RECONNECT_S = 0.5

Apply = Callable[[Iterable[FlagState]], None]

# Set the field only if the stored version is older, and publish in the same step,
# so concurrent writers and restores can never move a flag backwards.
_SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local v = tonumber(cjson.decode(cur)['version'])
  if v >= tonumber(ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PUBLISH', KEYS[2], ARGV[2])
return 1
"""


class FlagNotPublished(TechnicalError):
    """A change is audited in SQL but could not be written to Redis."""


class FlagStore(Protocol):
    """Reads and changes the flags of every domain."""

    audit: FlagAuditLog
    name: str

    def load(self) -> dict[str, FlagState]:
        """Every domain's current flag (fast path: what the router's cache starts from)."""

    def commit(self, before: FlagState, after: FlagState, **audit: object) -> FlagState:
        """Audit ``before -> after`` (keyword args as ``FlagAuditLog.append``), then publish."""

    def watch(self, apply: Apply, stop: threading.Event) -> None:
        """Call ``apply`` with changed states until ``stop`` is set (runs in a thread)."""

    def history(self, domain: str | None = None, limit: int = 100) -> list[AuditEntry]:
        """Audited changes, newest first."""


class SqlFlagStore:
    """Flags in the state database only (the embedded default, no Redis)."""

    name = "sql"

    def __init__(self, engine: Engine, *, poll_s: float = SQL_POLL_S) -> None:
        self.audit = FlagAuditLog(engine)
        self.poll_s = poll_s

    def load(self) -> dict[str, FlagState]:
        return self.audit.latest()

    def commit(self, before: FlagState, after: FlagState, **audit) -> FlagState:
        return self.audit.append(before, after, **audit)

    def history(self, domain: str | None = None, limit: int = 100) -> list[AuditEntry]:
        return self.audit.history(domain, limit)

    def watch(self, apply: Apply, stop: threading.Event) -> None:
        # Mark first, then read: a change between the two is read again, never missed.
        seen = self.audit.mark()
        apply(self.audit.latest().values())
        while not stop.wait(self.poll_s):
            try:
                mark = self.audit.mark()
                if mark != seen:
                    seen = mark
                    apply(self.audit.latest().values())
            except Exception:  # noqa: BLE001 - a watcher must outlive a database hiccup
                log.exception("flag watcher: polling the SQL audit failed; retrying")


class RedisFlagStore:
    """Flags in Redis (hash ``<prefix>flags``, channel ``<prefix>flags:changed``) over SQL."""

    name = "redis"

    def __init__(self, client, prefix: str, engine: Engine) -> None:
        self.client = client
        self.audit = FlagAuditLog(engine)
        self.key = f"{prefix}flags"
        self.channel = f"{prefix}flags:changed"
        self._set_if_newer = client.register_script(_SET_IF_NEWER)

    @classmethod
    def from_url(cls, url: str, prefix: str, engine: Engine) -> RedisFlagStore:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=5), prefix, engine)

    def publish(self, state: FlagState) -> bool:
        """Write ``state`` to Redis and notify, unless Redis already has a newer version."""
        text = state.to_json()
        return bool(self._set_if_newer(
            keys=[self.key, self.channel], args=[state.domain, text, state.version]
        ))

    def read(self) -> dict[str, FlagState]:
        """What Redis holds now (may be missing domains after a flush)."""
        states = (FlagState.from_json(text) for text in self.client.hvals(self.key))
        return {s.domain: s for s in states}

    def restore(self) -> list[FlagState]:
        """Copy every audited state that Redis lacks or holds older; returns those copied."""
        restored = []
        for state in self.audit.latest().values():
            # Untouched domains (version 0) are copied too, so a complete hash means
            # "nothing to restore" and a flush shows up as missing fields.
            if self.publish(state):
                restored.append(state)
        changed = [s for s in restored if s.version > 0]
        if changed:
            log.warning("flags restored into Redis from the SQL audit: %s",
                        ", ".join(f"{s.domain}@v{s.version}" for s in changed))
        return restored

    def load(self) -> dict[str, FlagState]:
        states = initial_flags()
        held = self.read()
        if not held.keys() >= states.keys():
            # Redis was flushed (or never filled): the audit is only read in that case.
            self.restore()
            held = self.read()
        states.update({d: s for d, s in held.items() if d in states})
        return states

    def commit(self, before: FlagState, after: FlagState, **audit) -> FlagState:
        import redis

        stamped = self.audit.append(before, after, **audit)
        try:
            self.publish(stamped)
        except redis.RedisError as exc:
            raise FlagNotPublished(
                f"{stamped.domain} v{stamped.version} is audited (it is the truth) but Redis "
                f"was not updated ({type(exc).__name__}: {exc}); workers keep the old flag "
                "until Redis is back and a watcher or `coexist cutover status` re-publishes it"
            ) from None
        return stamped

    def history(self, domain: str | None = None, limit: int = 100) -> list[AuditEntry]:
        return self.audit.history(domain, limit)

    def watch(self, apply: Apply, stop: threading.Event) -> None:
        import redis

        while not stop.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                # Subscribed first, then read: a change between the two is not lost.
                apply(self.load().values())
                refresh_at = time.monotonic() + REDIS_REFRESH_S
                audit_at, seen_mark = 0.0, None
                while not stop.is_set():
                    msg = pubsub.get_message(timeout=0.2)
                    if msg is not None and msg["type"] == "message":
                        apply([FlagState.from_json(msg["data"])])
                    now = time.monotonic()
                    if now >= audit_at:
                        mark = self.audit.mark()
                        if mark != seen_mark:
                            seen_mark = mark
                            self.restore()  # publishes only what Redis lacks
                        audit_at = now + REDIS_AUDIT_CHECK_S
                    if now >= refresh_at:
                        apply(self.load().values())
                        refresh_at = now + REDIS_REFRESH_S
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("flag watcher: Redis unavailable (%s); reconnecting", exc)
                stop.wait(REDIS_RECONNECT_S)
            except Exception:  # noqa: BLE001 - a watcher must outlive one bad message
                log.exception("flag watcher: unexpected error; resubscribing")
                stop.wait(REDIS_RECONNECT_S)
            finally:
                pubsub.close()
