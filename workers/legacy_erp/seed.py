"""Loading the sample data generator's output into the legacy database.

The sample (``coexistence.sample.SampleSpec``) is generated lazily and written
in batches: each batch of records is translated to legacy rows and inserted
with one ``executemany`` per table in one transaction, so memory stays flat
whatever the scale.  Rows are stamped with ``SEED_USER`` as last-change user:
to the change log they are data that was there before coexist, typed in by
people, not coexist's echoes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice

from sqlalchemy import Engine, func, select

from coexistence.canonical import DOMAINS, CanonicalRecord
from coexistence.legacy import LEGACY_TABLES
from coexistence.sample import SampleSpec
from workers.legacy_erp.schema import translator

__all__ = ["SEED_USER", "SEED_BATCH_RECORDS", "NotEmpty", "SeedReport", "seed_legacy"]

#: Last-change user of seeded rows (the legacy ERP's data-conversion user).
SEED_USER = "CONVERT"

#: Records translated and inserted per transaction.
SEED_BATCH_RECORDS = 1_000


class NotEmpty(Exception):
    """The legacy database already holds records; seeding would collide with them."""


@dataclass
class SeedReport:
    """Records and rows written per domain, and where the time went."""

    records: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    seconds: float = 0.0
    #: Of ``seconds``: generating the sample, translating it, writing it.
    generate_s: float = 0.0
    translate_s: float = 0.0
    write_s: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def write_rows_per_s(self) -> float:
        return self.rows / self.write_s if self.write_s > 0 else 0.0


def _insert_many(conn, table, rows: list[dict]) -> None:
    """One DBAPI ``executemany`` (SQLite) or ``COPY`` (PostgreSQL) of ``rows``.

    Bypasses SQLAlchemy's per-row parameter processing, which costs as much as
    the insert itself at this volume; the values are plain ints and strings.
    """
    columns = list(rows[0])
    if conn.dialect.name == "postgresql":
        # COPY: one round trip for the batch (the capture triggers still fire per row).
        cursor = conn.connection.driver_connection.cursor()
        names = ", ".join(f'"{c}"' for c in columns)
        with cursor.copy(f'COPY "{table.name}" ({names}) FROM STDIN') as copy:
            for row in rows:
                copy.write_row(tuple(row[c] for c in columns))
        return
    mark = "?"
    sql = (f'INSERT INTO "{table.name}" (' + ", ".join(f'"{c}"' for c in columns)
           + ") VALUES (" + ", ".join([mark] * len(columns)) + ")")
    conn.exec_driver_sql(sql, [tuple(row[c] for c in columns) for row in rows])


def _batches(records: Iterable[CanonicalRecord], size: int) -> Iterator[list[CanonicalRecord]]:
    it = iter(records)
    while batch := list(islice(it, size)):
        yield batch


def seed_legacy(
    engine: Engine,
    spec: SampleSpec,
    *,
    domains: Iterable[str] = DOMAINS,
    batch_records: int = SEED_BATCH_RECORDS,
    progress: Callable[[str, int], None] | None = None,
) -> SeedReport:
    """Insert the sample described by ``spec`` into an empty legacy database.

    ``progress(domain, records_so_far)`` is called after each batch.  Raises
    :class:`NotEmpty` when any legacy table of ``domains`` already has rows.
    """
    domains = list(domains)
    with engine.connect() as conn:
        for domain in domains:
            table = LEGACY_TABLES[domain][0].__table__
            existing = conn.execute(select(func.count()).select_from(table)).scalar_one()
            if existing:
                raise NotEmpty(
                    f"legacy table {table.name} already holds {existing} rows; "
                    "seed into an empty legacy database"
                )
    report = SeedReport()
    stamp = datetime.now(UTC).replace(microsecond=0)
    started = time.perf_counter()
    for domain in domains:
        t = translator(domain)
        header_table = t.TABLE.__table__
        child_table = t.CHILD_TABLE.__table__ if t.CHILD_TABLE is not None else None
        done = 0
        batches = _batches(spec.iter(domain), batch_records)
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            report.generate_s += t1 - t0
            if batch is None:
                break
            headers: list[dict] = []
            children: list[dict] = []
            for record in batch:
                header, lines = t.from_canonical(record, changed_by=SEED_USER, changed_at=stamp)
                headers.append(header)
                children.extend(lines)
            t2 = time.perf_counter()
            report.translate_s += t2 - t1
            with engine.begin() as conn:
                _insert_many(conn, header_table, headers)
                if child_table is not None and children:
                    _insert_many(conn, child_table, children)
            report.write_s += time.perf_counter() - t2
            done += len(batch)
            report.rows += len(headers) + len(children)
            if progress is not None:
                progress(domain, done)
        report.records[domain] = done
    report.seconds = time.perf_counter() - started
    return report
