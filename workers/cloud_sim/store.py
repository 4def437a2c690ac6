"""The simulator's persistence: one SQLite file (WAL), so a restart loses nothing.

Tables:

* ``entities``: one row per resource (entity set, server id, business number,
  per-record revision used as the ETag, JSON document, modification time,
  deleted flag).  A DELETE keeps the row as a tombstone with the deleting
  client's ``coexistSourceVersion``, which is how a late, older write is told
  apart from a legitimate re-creation.
* ``changes``: the change feed, ``cursor`` an AUTOINCREMENT key, so strictly
  increasing and never reused, with the client id that wrote.
* ``idempotency``: the first successful answer to each (client, key), replayed
  for a retry with the same request fingerprint.

The server runs on one event loop thread, so every request is a transaction of
its own without further locking.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS entities (
    entity_set TEXT NOT NULL,
    id TEXT NOT NULL,
    number TEXT NOT NULL,
    rev INTEGER NOT NULL,
    source_version INTEGER,
    data TEXT NOT NULL,
    modified TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    modified_by TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (entity_set, id)
);
CREATE UNIQUE INDEX IF NOT EXISTS entities_number ON entities (entity_set, number);
CREATE INDEX IF NOT EXISTS entities_modified ON entities (entity_set, modified);
CREATE TABLE IF NOT EXISTS changes (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    entity_set TEXT NOT NULL,
    id TEXT NOT NULL,
    number TEXT NOT NULL,
    op TEXT NOT NULL,
    client TEXT NOT NULL,
    at TEXT NOT NULL,
    rev INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS number_sequences (
    entity_set TEXT PRIMARY KEY,
    next_number INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency (
    client TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    etag TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (client, key)
);
"""

#: Rows fetched per query while exporting, which bounds the export's memory.
EXPORT_CHUNK_ROWS = 500


def now_iso() -> str:
    """UTC now in one fixed-width format, so ISO strings compare as times do."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def etag_of(rev: int) -> str:
    return f'W/"{rev}"'


@dataclass(slots=True)
class Row:
    entity_set: str
    id: str
    number: str
    rev: int
    source_version: int | None
    #: The stored JSON document (parsed only when a caller needs its fields).
    raw: str
    modified: str
    deleted: bool
    #: The client id of the last write (``lastModifiedBy``): who made this state.
    modified_by: str = ""

    @property
    def etag(self) -> str:
        return etag_of(self.rev)

    @property
    def data(self) -> dict:
        return json.loads(self.raw)

    def document(self, select: frozenset[str] | None = None) -> dict:
        """The JSON resource as the API shows it, or only the ``select``-ed fields."""
        if select is not None and select <= _HEAD_FIELDS:
            # Answerable from the columns alone: no JSON parse.
            head = {"id": self.id, "number": self.number,
                    "coexistSourceVersion": self.source_version,
                    "lastModifiedDateTime": self.modified,
                    "lastModifiedBy": self.modified_by}
            return {"@odata.etag": self.etag, **{k: head[k] for k in select}}
        doc = {"@odata.etag": self.etag, "id": self.id, **self.data}
        doc["lastModifiedDateTime"] = self.modified
        doc["lastModifiedBy"] = self.modified_by
        if select is not None:
            doc = {k: v for k, v in doc.items() if k in select or k == "@odata.etag"}
        return doc

    def tombstone(self) -> dict:
        return {
            "@removed": {"reason": "deleted"},
            "@odata.etag": self.etag,
            "id": self.id,
            "number": self.number,
            "coexistSourceVersion": self.source_version,
            "lastModifiedDateTime": self.modified,
            "lastModifiedBy": self.modified_by,
        }


#: Fields a ``$select`` can get without parsing the stored document.  ``lastModifiedBy``
#: is the client id of the last write, as real cloud ERPs keep it (the export and
#: checksum streams leave it out: they carry data, not who wrote it).
_HEAD_FIELDS = frozenset({"id", "number", "coexistSourceVersion", "lastModifiedDateTime",
                          "lastModifiedBy"})

_COLUMNS = "entity_set, id, number, rev, source_version, data, modified, deleted, modified_by"


def _row(t: tuple) -> Row:
    return Row(t[0], t[1], t[2], t[3], t[4], t[5], t[6], bool(t[7]), t[8])


class Store:
    """SQLite access for the simulator; every method is one statement or a short unit."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per request.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (the simulator's restart case).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(entities)")}
        if "modified_by" not in columns:
            # A store file of an older simulator: its rows' writer is unknown ("").
            self.db.execute(
                "ALTER TABLE entities ADD COLUMN modified_by TEXT NOT NULL DEFAULT ''")
        self.now = now_iso()

    def reset(self) -> None:
        """Forget every entity, change, idempotency key and number sequence (tests start
        empty: a reset simulator numbers from the start again)."""
        self.rollback()
        self.db.executescript(
            "DELETE FROM entities; DELETE FROM changes; DELETE FROM idempotency;"
            "DELETE FROM number_sequences;"
            "DELETE FROM sqlite_sequence WHERE name='changes';"
        )

    def close(self) -> None:
        self.db.close()

    # ----------------------------------------------------------------- transactions

    def begin(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        # One modification time per transaction (a whole $batch shares it), as a
        # database's transaction timestamp; it also spares a strftime per write.
        self.now = now_iso()

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    # ----------------------------------------------------------------- reads

    def by_id(self, entity_set: str, id_: str) -> Row | None:
        t = self.db.execute(
            f"SELECT {_COLUMNS} FROM entities WHERE entity_set=? AND id=?", (entity_set, id_)
        ).fetchone()
        return _row(t) if t else None

    def by_number(self, entity_set: str, number: str) -> Row | None:
        t = self.db.execute(
            f"SELECT {_COLUMNS} FROM entities WHERE entity_set=? AND number=?",
            (entity_set, number),
        ).fetchone()
        return _row(t) if t else None

    def page(
        self, entity_set: str, *, after_number: str | None, modified_after: str | None, top: int,
        fields: dict[str, str] | None = None,
    ) -> list[Row]:
        """Live rows ordered by number, keyset-paged (``after_number`` exclusive), whose
        top-level document ``fields`` equal the values given."""
        sql = f"SELECT {_COLUMNS} FROM entities WHERE entity_set=? AND deleted=0"
        args: list = [entity_set]
        for name, value in (fields or {}).items():
            sql += " AND json_extract(data, ?) = ?"
            args += [f"$.{name}", value]
        if after_number is not None:
            sql += " AND number > ?"
            args.append(after_number)
        if modified_after is not None:
            sql += " AND modified > ?"
            args.append(modified_after)
        sql += " ORDER BY number LIMIT ?"
        args.append(top)
        return [_row(t) for t in self.db.execute(sql, args)]

    def export(self, entity_set: str, after: str = "") -> Iterator[bytes]:
        """Every live document with ``number > after`` as NDJSON lines, sorted by number.

        Each chunk is its own query (keyset on number), so no read transaction
        stays open while the client is slow and memory holds one chunk.
        """
        while True:
            rows = self.db.execute(
                "SELECT id, rev, data, modified, number FROM entities "
                "WHERE entity_set=? AND deleted=0 AND number > ? ORDER BY number LIMIT ?",
                (entity_set, after, EXPORT_CHUNK_ROWS),
            ).fetchall()
            if not rows:
                return
            lines = []
            for id_, rev, data, modified, _number in rows:
                # The stored JSON is spliced, not re-parsed: export is the hot path
                # of reconciliation.
                head = f'{{"@odata.etag":{json.dumps(etag_of(rev))},"id":"{id_}",'
                tail = f',"lastModifiedDateTime":"{modified}"}}\n'
                lines.append(head + data[1:-1] + tail)
            yield "".join(lines).encode()
            after = rows[-1][4]

    def changes(self, after: int, limit: int) -> list[dict]:
        rows = self.db.execute(
            "SELECT cursor, entity_set, id, number, op, client, at, rev FROM changes "
            "WHERE cursor > ? ORDER BY cursor LIMIT ?",
            (after, limit),
        ).fetchall()
        return [
            {
                "cursor": c,
                "entitySet": s,
                "id": i,
                "number": n,
                "op": op,
                "clientId": client,
                "at": at,
                "version": rev,
            }
            for c, s, i, n, op, client, at, rev in rows
        ]

    # ----------------------------------------------------------------- writes

    def insert(
        self, entity_set: str, number: str, data: dict | str, source_version: int | None,
        client: str,
    ) -> Row:
        """A new row; ``data`` is the document, or its JSON text already serialised."""
        raw = data if isinstance(data, str) else _dumps(data)
        row = Row(entity_set, str(uuid.uuid4()), number, 1, source_version, raw, self.now, False,
                  client)
        self.db.execute(
            f"INSERT INTO entities ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,0,?)",
            (entity_set, row.id, number, 1, source_version, raw, row.modified, client),
        )
        self._change(row, "upsert", client)
        return row

    def next_number(self, entity_set: str, first: int) -> str:
        """The next business number of ``entity_set``'s sequence (from ``first``), taken in
        the request's transaction, so the insert that uses it commits it or gives it back.
        A number in use (created with a number the client chose) is skipped."""
        row = self.db.execute("SELECT next_number FROM number_sequences WHERE entity_set=?",
                              (entity_set,)).fetchone()
        number = max(int(row[0]) if row else first, first)
        # Numbers the client chose: only all-digit ones can collide with the sequence.
        top = self.db.execute(
            "SELECT MAX(CAST(number AS INTEGER)) FROM entities WHERE entity_set=? "
            "AND number NOT GLOB '*[^0-9]*' AND number <> ''", (entity_set,)).fetchone()[0]
        if top is not None and int(top) >= number:
            number = int(top) + 1
        self.db.execute(
            "INSERT INTO number_sequences (entity_set, next_number) VALUES (?, ?) "
            "ON CONFLICT (entity_set) DO UPDATE SET next_number = excluded.next_number",
            (entity_set, number + 1))
        return str(number)

    def replace(self, row: Row, data: dict | str, source_version: int | None,
                client: str) -> Row:
        """Overwrite a live row or revive a tombstone; bumps the revision.  ``data`` as
        for ``insert``."""
        raw = data if isinstance(data, str) else _dumps(data)
        new = Row(
            row.entity_set, row.id, row.number, row.rev + 1, source_version, raw, self.now, False,
            client,
        )
        self.db.execute(
            "UPDATE entities SET rev=?, source_version=?, data=?, modified=?, deleted=0, "
            "modified_by=? WHERE entity_set=? AND id=?",
            (new.rev, source_version, raw, new.modified, client, row.entity_set, row.id),
        )
        self._change(new, "upsert", client)
        return new

    def mark_deleted(self, row: Row, source_version: int | None, client: str) -> Row:
        new = Row(
            row.entity_set, row.id, row.number, row.rev + 1, source_version, row.raw,
            self.now, True, client,
        )
        self.db.execute(
            "UPDATE entities SET rev=?, source_version=?, modified=?, deleted=1, modified_by=? "
            "WHERE entity_set=? AND id=?",
            (new.rev, source_version, new.modified, client, row.entity_set, row.id),
        )
        self._change(new, "delete", client)
        return new

    def _change(self, row: Row, op: str, client: str) -> None:
        self.db.execute(
            "INSERT INTO changes (entity_set, id, number, op, client, at, rev) "
            "VALUES (?,?,?,?,?,?,?)",
            (row.entity_set, row.id, row.number, op, client, row.modified, row.rev),
        )

    # ----------------------------------------------------------------- idempotency

    def remembered(self, client: str, key: str) -> tuple[str, int, str | None, bytes] | None:
        return self.db.execute(
            "SELECT fingerprint, status, etag, body FROM idempotency WHERE client=? AND key=?",
            (client, key),
        ).fetchone()

    def remember(
        self, client: str, key: str, fingerprint: str, status: int, etag: str | None, body: bytes
    ) -> None:
        self.db.execute(
            "INSERT INTO idempotency (client, key, fingerprint, status, etag, body) "
            "VALUES (?,?,?,?,?,?)",
            (client, key, fingerprint, status, etag, body),
        )


def _dumps(data: dict) -> str:
    return json.dumps(data, separators=(",", ":"))
