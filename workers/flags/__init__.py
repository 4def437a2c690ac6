"""Cutover flag storage, the per-process cache, guard facts and cutover operations.

Composition (what the router and the CLI call)::

    engine = open_state(settings)                  # state DB at the code's revision
    store = store_for(settings, engine)            # Redis if configured, else SQL
    cache = FlagCache(store).start()               # evaluation: cache.route_for(...)

Configuration from the environment (all optional):

* ``COEXIST_FREEZE``: freeze windows, ``START/END[,START/END...]`` in ISO 8601
  with a time zone, e.g. ``2026-11-28T00:00Z/2026-12-02T00:00Z``; no forward
  move is allowed inside one (unless forced).
* ``COEXIST_CUTOVER_MAX_DRIFT_PCT``: largest acceptable reconciliation drift in
  percent (default ``coexistence.preflight.DEFAULT_MAX_DRIFT_PCT``).
* ``COEXIST_CUTOVER_MAX_BACKLOG``: largest acceptable outbox backlog (default 0).
* ``COEXIST_ACTOR`` (else ``USER``): who is changing flags, unless ``--actor``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from sqlalchemy import Engine

from coexistence.flags import FlagError
from coexistence.preflight import (
    DEFAULT_MAX_BACKLOG,
    DEFAULT_MAX_DRIFT_PCT,
    GuardPolicy,
    parse_freeze_windows,
)
from workers.config import Settings
from workers.db import create_state_engine
from workers.flags.audit import AuditEntry, FlagAudit, FlagAuditLog, FlagConflict
from workers.flags.cache import FlagCache
from workers.flags.facts import SqlPreflightFacts
from workers.flags.store import FlagNotPublished, FlagStore, RedisFlagStore, SqlFlagStore
from workers.migrate import prepare_state

__all__ = [
    "AuditEntry", "FlagAudit", "FlagAuditLog", "FlagCache", "FlagConflict", "FlagNotPublished",
    "FlagStore",
    "RedisFlagStore", "SqlFlagStore", "SqlPreflightFacts", "actor_from_env", "open_state",
    "policy_from_env", "store_for",
]


def open_state(settings: Settings, *, create_if_new: bool = False) -> Engine:
    """The state database at the code's schema revision, else ``SchemaNotCurrent``
    naming ``coexist db upgrade``; ``create_if_new``: the embedded default's first
    start may create a new SQLite one (``workers.migrate.prepare_state``)."""
    if settings.state_url.startswith("sqlite") and create_if_new:
        settings.ensure_home()
    engine = create_state_engine(settings.state_url)
    try:
        prepare_state(engine, create_if_new=create_if_new)
    except BaseException:
        engine.dispose()
        raise
    return engine


def store_for(settings: Settings, engine: Engine) -> FlagStore:
    """Redis in front of SQL when ``COEXIST_REDIS_URL`` is set, else SQL alone."""
    if settings.redis_url:
        return RedisFlagStore.from_url(settings.redis_url, settings.redis_prefix, engine)
    return SqlFlagStore(engine)


def _number(env: Mapping[str, str], name: str, default, kind):
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise FlagError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if value < 0:
        raise FlagError(f"{name}={raw!r} must not be negative")
    return value


def policy_from_env(env: Mapping[str, str] | None = None) -> GuardPolicy:
    env = os.environ if env is None else env
    return GuardPolicy(
        max_drift_pct=_number(env, "COEXIST_CUTOVER_MAX_DRIFT_PCT", DEFAULT_MAX_DRIFT_PCT, float),
        max_backlog=_number(env, "COEXIST_CUTOVER_MAX_BACKLOG", DEFAULT_MAX_BACKLOG, int),
        freeze_windows=parse_freeze_windows(env.get("COEXIST_FREEZE"), source="COEXIST_FREEZE"),
    )


def actor_from_env(explicit: str | None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    actor = (explicit or env.get("COEXIST_ACTOR") or env.get("USER") or "").strip()
    if not actor:
        raise FlagError("who is making this change? pass --actor or set COEXIST_ACTOR")
    return actor
