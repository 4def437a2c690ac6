"""The ERP contract held against the legacy adapter, on SQLite and on PostgreSQL."""

from __future__ import annotations

import shutil
import uuid

import pytest

from coexistence.canonical import CanonicalRecord
from coexistence.legacy import LEGACY_METADATA
from tests.contracts.erp_contract import ErpContract, ErpHarness, sample
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.capture import CAPTURE_METADATA
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema, translator


class LegacyContract(ErpContract):
    """The legacy ERP stores a documented normalisation (upper case, CHAR widths...)
    and holds numeric document and agreement numbers."""

    def as_stored(self, record: CanonicalRecord) -> CanonicalRecord:
        return translator(record.domain).normalise(record)

    def make_record(self, domain: str, n: int, variant: int = 0) -> CanonicalRecord:
        return legacy_sample(domain, n, variant)


def legacy_sample(domain: str, n: int, variant: int = 0) -> CanonicalRecord:
    """The contract's sample with the numeric keys the legacy ERP holds."""
    record = sample(domain, n, variant)
    numbers = {"price": 7000, "order": 500000, "shipment": 700000, "invoice": 900000}
    if domain not in numbers:
        return record
    update = {"key": str(numbers[domain] + n)}
    if domain in ("shipment", "invoice"):
        update["order_key"] = str(numbers["order"] + n)
    return type(record).model_validate({**record.model_dump(), **update})


def harness_on(engine) -> ErpHarness:
    erp = LegacyErp(engine)
    return ErpHarness(erp=erp, feed=erp, person_upsert=erp.person_upsert)


@pytest.fixture(scope="module")
def sqlite_template(tmp_path_factory):
    """A legacy database file with the schema, created once and copied per test."""
    path = tmp_path_factory.mktemp("legacy") / "template.db"
    engine = create_legacy_engine(f"sqlite:///{path}")
    create_legacy_schema(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="module")
def pg_legacy_engine(pg_database_url):
    """One PostgreSQL schema with the legacy schema for the module (DDL is slow);
    each test empties it first."""
    from sqlalchemy import create_engine, text

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_legacy_engine(f"{pg_database_url}?options=-csearch_path%3D{schema}")
    create_legacy_schema(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


class TestLegacyErpOnSqlite(LegacyContract):
    @pytest.fixture
    def harness(self, tmp_path, sqlite_template):
        path = tmp_path / "legacy.db"
        shutil.copyfile(sqlite_template, path)
        engine = create_legacy_engine(f"sqlite:///{path}")
        yield harness_on(engine)
        engine.dispose()


@pytest.mark.integration
class TestLegacyErpOnPostgres(LegacyContract):
    @pytest.fixture
    def harness(self, pg_legacy_engine):
        # DELETE, not TRUNCATE: much faster on tiny tables.  The change log goes
        # last, taking the rows the legacy deletes just logged with it.
        tables = [*reversed(LEGACY_METADATA.sorted_tables), *CAPTURE_METADATA.sorted_tables]
        with pg_legacy_engine.begin() as conn:
            for table in tables:
                conn.execute(table.delete())
        yield harness_on(pg_legacy_engine)
