"""Bulk statements at the driver level: one INSERT (or upsert) for many rows without
SQLAlchemy's per-row parameter work.

``conn.execute(stmt, rows)`` builds every row's parameters through the compiled
statement (``construct_params``, type processing, cache-key generation): a py-spy
``--gil`` profile of the backfill put ~70 % of its per-batch state transaction there
and ~10 % in SQLite itself.  :func:`executemany` compiles ``stmt`` once per dialect and
set of columns, applies the same bind processors SQLAlchemy would (so what is stored is
byte for byte what ``conn.execute`` stores: SQLite's datetime strings, for one), reuses
a processed value when consecutive rows hold the same object (a batch's ``now``), and
hands the rows to the DBAPI's ``executemany`` on the caller's connection and
transaction.

Only for statements without Python-side column defaults left to fill (every column a
row needs is in the row) and with rows of the same keys; anything else goes through
``conn.execute`` unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: (statement, dialect, row keys) -> (SQL, parameter names or None for named, processors).
_COMPILED: dict[tuple[Any, str, tuple[str, ...]], tuple[str, tuple[str, ...] | None, dict]] = {}
#: Statements are module-level constants; more than this many entries means a caller
#: builds a statement per call, and the cache starts again rather than grow.
_CACHE_MAX = 256


def executemany(conn, stmt, rows: Sequence[dict[str, Any]]) -> None:
    """Execute ``stmt`` (an INSERT, possibly with ON CONFLICT) once per row of ``rows``."""
    if not rows:
        return
    keys = tuple(rows[0])
    if any(len(row) != len(keys) for row in rows):
        conn.execute(stmt, list(rows))
        return
    dialect = conn.dialect
    entry = _COMPILED.get((stmt, dialect.name, keys))
    if entry is None:
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
        names = tuple(compiled.positiontup) if compiled.positiontup is not None else None
        wanted = set(names) if names is not None else set(compiled.bind_names.values())
        if not wanted <= set(keys):
            conn.execute(stmt, list(rows))  # a default to fill: SQLAlchemy's own path
            return
        if len(_COMPILED) >= _CACHE_MAX:
            _COMPILED.clear()
        entry = (compiled.string, names, dict(compiled._bind_processors))
        _COMPILED[(stmt, dialect.name, keys)] = entry
    sql, names, processors = entry
    if names is None:  # named parameters (psycopg): the rows as they are, processed
        params: list = [dict(row) for row in rows] if processors else list(rows)
        for name, process in processors.items():
            for p, value in zip(params, _processed([p[name] for p in params], process),
                                strict=True):
                p[name] = value
    else:
        params = _positional(rows, names, processors)
    conn.exec_driver_sql(sql, params)


def _positional(rows: Sequence[dict], names: tuple[str, ...], processors: dict) -> list:
    columns = []
    for name in names:
        values = [row[name] for row in rows]
        process = processors.get(name)
        if process is not None:
            values = _processed(values, process)
        columns.append(values)
    return list(zip(*columns, strict=True))


def _processed(values: list, process) -> list:
    out, last, done = [], _NONE, None
    for value in values:
        if value is not last:
            last, done = value, process(value)
        out.append(done)
    return out


_NONE = object()
