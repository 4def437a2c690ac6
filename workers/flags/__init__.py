"""Cutover flag storage, the per-process cache, guard facts and cutover operations.

Composition (done by ``workers.bootstrap.App``, the only place that names them)::

    store = store_for(settings, engine)            # Redis if configured, else SQL
    cache = FlagCache(store).start()               # evaluation: cache.route_for(...)
    cutover = Cutover(store, SqlPreflightFacts(engine), app.policy)

The guards' settings (``COEXIST_FREEZE``, ``COEXIST_MAX_DRIFT_PCT``,
``COEXIST_CUTOVER_MAX_BACKLOG``) and the actor (``COEXIST_ACTOR``) are read with
every other setting in ``workers.config``.
"""

from __future__ import annotations

from sqlalchemy import Engine

from workers.config import Settings
from workers.flags.audit import AuditEntry, FlagAudit, FlagAuditLog, FlagConflict
from workers.flags.cache import FlagCache
from workers.flags.facts import SqlPreflightFacts
from workers.flags.store import FlagNotPublished, FlagStore, RedisFlagStore, SqlFlagStore

__all__ = [
    "AuditEntry", "FlagAudit", "FlagAuditLog", "FlagCache", "FlagConflict", "FlagNotPublished",
    "FlagStore", "RedisFlagStore", "SqlFlagStore", "SqlPreflightFacts", "store_for",
]


def store_for(settings: Settings, engine: Engine) -> FlagStore:
    """Redis in front of SQL when ``COEXIST_REDIS_URL`` is set, else SQL alone."""
    if settings.redis_url:
        return RedisFlagStore.from_url(settings.redis_url, settings.redis_prefix, engine)
    return SqlFlagStore(engine)
