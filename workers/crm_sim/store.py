"""The CRM simulator's persistence: one SQLite file (WAL), so a restart loses nothing.

Tables:

* ``records``: every sObject row as a JSON document of API field names (``Id`` included),
  with a deleted flag (the recycle bin);
* ``extids``: the external-id index (object, field, value) -> record id, not unique by
  itself: the schema says which external ids are unique, and a non-unique one can match
  several records (the 300 of an upsert);
* ``refs``: lookups and master-detail links (child -> parent) for roll-ups and automation;
* ``dupkeys``: the duplicate rule's match keys of each live account;
* ``events``: the change-data-capture stream, ``replay_id`` strictly increasing and never
  reused; ``meta['purged_through']`` is the highest replay id dropped by retention;
* ``api_usage``: API requests per minute, the rolling 24-hour counter;
* ``sessions``: OAuth access tokens and when they were issued.

The server answers on one event loop thread, so a request is one transaction without
further locking.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from workers.crm_sim.schema import OBJECTS, record_id

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    sobject TEXT NOT NULL,
    data TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS records_sobject ON records (sobject, id);
CREATE TABLE IF NOT EXISTS extids (
    sobject TEXT NOT NULL,
    field TEXT NOT NULL,
    value TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (id, field)
);
CREATE INDEX IF NOT EXISTS extids_value ON extids (sobject, field, value);
CREATE TABLE IF NOT EXISTS refs (
    id TEXT NOT NULL,
    field TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (id, field)
);
CREATE INDEX IF NOT EXISTS refs_target ON refs (target, field);
CREATE TABLE IF NOT EXISTS dupkeys (
    id TEXT PRIMARY KEY,
    name_key TEXT NOT NULL,
    postal TEXT NOT NULL,
    phone TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dupkeys_name ON dupkeys (name_key);
CREATE TABLE IF NOT EXISTS events (
    replay_id INTEGER PRIMARY KEY AUTOINCREMENT,
    commit_ms INTEGER NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (commit_ms);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_usage (
    minute INTEGER PRIMARY KEY,
    n INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    issued_ms INTEGER NOT NULL
);
"""


#: One encoder for every write: ``json.dumps`` with ``separators`` builds a new encoder per
#: call (9 % of the simulator's CPU on a collection of updates).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _dumps(doc: dict) -> str:
    return _ENCODER.encode(doc)


class Store:
    """SQLite access for the simulator; every method is one statement or a short unit."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (the simulator's restart case).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def reset(self) -> None:
        """Forget every record, event, session and counter (tests start empty)."""
        self.rollback()
        self.db.executescript(
            "DELETE FROM records; DELETE FROM extids; DELETE FROM refs; DELETE FROM dupkeys;"
            "DELETE FROM events; DELETE FROM meta; DELETE FROM api_usage; DELETE FROM sessions;"
            "DELETE FROM sqlite_sequence WHERE name='events';"
        )

    # ----------------------------------------------------------------- transactions

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # ----------------------------------------------------------------- records

    def get(self, id_: str, *, include_deleted: bool = False) -> dict | None:
        row = self.db.execute("SELECT data, deleted FROM records WHERE id=?", (id_,)).fetchone()
        if row is None or (row[1] and not include_deleted):
            return None
        return json.loads(row[0])

    def get_many(self, ids: Iterable[str]) -> dict[str, dict]:
        ids = list(ids)
        out: dict[str, dict] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for id_, data in self.db.execute(
                    f"SELECT id, data FROM records WHERE deleted=0 AND id IN ({marks})", chunk):
                out[id_] = json.loads(data)
        return out

    def find_external(self, sobject: str, field: str, value: str) -> list[str]:
        """Live records of ``sobject`` whose external id ``field`` equals ``value``."""
        return [r[0] for r in self.db.execute(
            "SELECT e.id FROM extids e JOIN records r ON r.id = e.id "
            "WHERE e.sobject=? AND e.field=? AND e.value=? AND r.deleted=0 ORDER BY e.id",
            (sobject, field, value))]

    def scan(self, sobject: str) -> Iterable[dict]:
        for (data,) in self.db.execute(
                "SELECT data FROM records WHERE sobject=? AND deleted=0 ORDER BY id", (sobject,)):
            yield json.loads(data)

    def next_id(self, sobject: str) -> str:
        prefix = OBJECTS[sobject].key_prefix
        key = f"seq:{prefix}"
        n = self.meta(key) + 1
        self.set_meta(key, n)
        return record_id(prefix, n)

    def put(self, doc: dict, sobject: str, old: dict | None = None) -> None:
        """Insert or replace the live record ``doc``; its index rows are rewritten only
        where they differ from ``old`` (the record as it was, None for a new one)."""
        id_ = doc["Id"]
        self.db.execute("INSERT OR REPLACE INTO records (id, sobject, data, deleted) "
                        "VALUES (?,?,?,0)", (id_, sobject, _dumps(doc)))
        obj = OBJECTS[sobject]
        old = old or {}
        for name in obj.external_ids:
            value = doc.get(name)
            if old and value == old.get(name):
                continue
            self.db.execute("DELETE FROM extids WHERE id=? AND field=?", (id_, name))
            if value is not None:
                self.db.execute("INSERT INTO extids (sobject, field, value, id) VALUES (?,?,?,?)",
                                (sobject, name, str(value), id_))
        for f in obj.fields.values():
            if not f.relationship or (old and doc.get(f.name) == old.get(f.name)):
                continue
            self.db.execute("DELETE FROM refs WHERE id=? AND field=?", (id_, f.name))
            if doc.get(f.name):
                self.db.execute("INSERT INTO refs (id, field, target) VALUES (?,?,?)",
                                (id_, f.name, doc[f.name]))

    def mark_deleted(self, id_: str) -> None:
        self.db.execute("UPDATE records SET deleted=1 WHERE id=?", (id_,))
        self.db.execute("DELETE FROM dupkeys WHERE id=?", (id_,))

    def children(self, target: str, field: str) -> list[dict]:
        return [json.loads(r[0]) for r in self.db.execute(
            "SELECT r.data FROM refs f JOIN records r ON r.id = f.id "
            "WHERE f.target=? AND f.field=? AND r.deleted=0 ORDER BY r.id", (target, field))]

    # ----------------------------------------------------------------- duplicate keys

    def set_dupkeys(self, id_: str, name_key: str, postal: str, phone: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO dupkeys (id, name_key, postal, phone) "
                        "VALUES (?,?,?,?)", (id_, name_key, postal, phone))

    def dup_candidates(self, name_key: str) -> list[tuple[str, str, str]]:
        return self.db.execute("SELECT id, postal, phone FROM dupkeys WHERE name_key=? "
                               "ORDER BY id", (name_key,)).fetchall()

    # ----------------------------------------------------------------- change events

    def append_event(self, commit_ms: int, payload: dict) -> int:
        cur = self.db.execute("INSERT INTO events (commit_ms, payload) VALUES (?,?)",
                              (commit_ms, _dumps(payload)))
        return int(cur.lastrowid)

    def events_after(self, replay_id: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` events after ``replay_id``: (replay id, the payload's JSON text as
        stored, which the feed sends as it is)."""
        return self.db.execute(
            "SELECT replay_id, payload FROM events WHERE replay_id > ? ORDER BY replay_id "
            "LIMIT ?", (replay_id, limit)).fetchall()

    def latest_replay_id(self) -> int:
        row = self.db.execute("SELECT MAX(replay_id) FROM events").fetchone()
        return int(row[0]) if row[0] is not None else self.meta("purged_through")

    def purge_events(self, older_than_ms: int) -> None:
        """Drop events committed before ``older_than_ms`` (the retention window)."""
        row = self.db.execute("SELECT MAX(replay_id) FROM events WHERE commit_ms < ?",
                              (older_than_ms,)).fetchone()
        if row[0] is None:
            return
        self.db.execute("DELETE FROM events WHERE replay_id <= ?", (row[0],))
        self.set_meta("purged_through", max(self.meta("purged_through"), int(row[0])))

    # ----------------------------------------------------------------- meta, usage, sessions

    def meta(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def set_meta(self, key: str, value: int) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)", (key, value))

    def count_request(self, minute: int) -> None:
        self.db.execute("INSERT INTO api_usage (minute, n) VALUES (?, 1) "
                        "ON CONFLICT (minute) DO UPDATE SET n = n + 1", (minute,))

    def usage_since(self, minute: int) -> int:
        row = self.db.execute("SELECT COALESCE(SUM(n), 0) FROM api_usage WHERE minute > ?",
                              (minute,)).fetchone()
        return int(row[0])

    def clear_usage(self) -> None:
        self.db.execute("DELETE FROM api_usage")

    def add_session(self, token: str, client_id: str, user_id: str, issued_ms: int) -> None:
        self.db.execute("INSERT INTO sessions (token, client_id, user_id, issued_ms) "
                        "VALUES (?,?,?,?)", (token, client_id, user_id, issued_ms))

    def session(self, token: str) -> tuple[str, str, int] | None:
        return self.db.execute("SELECT client_id, user_id, issued_ms FROM sessions "
                               "WHERE token=?", (token,)).fetchone()

    def expire_sessions(self) -> None:
        self.db.execute("UPDATE sessions SET issued_ms = 0")
