"""Shape of the legacy ERP's schema (declared only; created by the legacy adapter)."""

from __future__ import annotations

import pytest
from sqlalchemy import CHAR
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable
from sqlmodel import SQLModel

from bus.db import BUS_METADATA
from coexistence.legacy import AUDIT_COLUMNS, LEGACY_METADATA, LEGACY_TABLES

TABLE_NAMES = {"CUSTMAST", "CUSTSITE", "ITEMMAST", "CONTPRC", "INVBAL", "ORDHDR", "ORDLIN",
               "SHPHDR", "SHPLIN", "INVHDR", "INVLIN"}


def test_the_legacy_tables_live_on_their_own_metadata_only():
    assert set(LEGACY_METADATA.tables) == TABLE_NAMES
    assert not TABLE_NAMES & set(SQLModel.metadata.tables)
    assert not TABLE_NAMES & set(BUS_METADATA.tables)


@pytest.mark.parametrize(
    ("table", "key"),
    [("CUSTMAST", ["CUSTNO"]), ("CUSTSITE", ["CUSTNO", "SITENO"]), ("ITEMMAST", ["ITEMNO"]),
     ("CONTPRC", ["CONTNO"]), ("INVBAL", ["WHSE", "ITEMNO"]), ("ORDHDR", ["ORDNO"]),
     ("ORDLIN", ["ORDNO", "LINENO"]), ("SHPHDR", ["SHPNO"]), ("SHPLIN", ["SHPNO", "LINENO"]),
     ("INVHDR", ["INVNO"]), ("INVLIN", ["INVNO", "LINENO"])],
)
def test_keys_are_composite_where_natural(table, key):
    assert [c.name for c in LEGACY_METADATA.tables[table].primary_key.columns] == key


@pytest.mark.parametrize("domain", list(LEGACY_TABLES))
def test_every_header_table_carries_the_audit_columns(domain):
    header, _ = LEGACY_TABLES[domain]
    columns = header.__table__.columns
    assert set(AUDIT_COLUMNS) <= set(columns.keys())
    assert columns["LCHGUSER"].type.length == 10


def test_names_are_upper_case_and_text_is_fixed_width_char():
    for table in LEGACY_METADATA.tables.values():
        assert table.name.isupper()
        for column in table.columns:
            assert column.name.isupper(), column.name
            assert not column.nullable, column.name
            if isinstance(column.type, CHAR):
                assert column.type.length, column.name


def test_line_numbers_are_never_invented_by_the_database():
    for name in ("ORDLIN", "SHPLIN", "INVLIN"):
        assert LEGACY_METADATA.tables[name].columns["LINENO"].autoincrement is False


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()])
def test_the_schema_compiles_for_sqlite_and_postgresql(dialect):
    for table in LEGACY_METADATA.sorted_tables:
        ddl = str(CreateTable(table).compile(dialect=dialect))
        assert f'"{table.name}"' in ddl
