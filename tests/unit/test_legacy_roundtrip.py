"""Round-trip properties of the legacy translators, for every domain."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coexistence.canonical import DOMAINS, MODELS
from coexistence.legacy.models import AUDIT_COLUMNS, LEGACY_TABLES
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from tests.unit.strategies import canonical_records, legacy_rows

PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def test_every_domain_has_a_legacy_translator():
    assert set(LEGACY_TRANSLATORS) == set(DOMAINS) == set(LEGACY_TABLES)


@pytest.mark.parametrize("domain", DOMAINS)
@PROPERTY
@given(data=st.data())
def test_records_cross_the_legacy_erp_up_to_the_documented_normalisation_only(domain, data):
    """One draw, three properties (generation is the expensive part):

    * canonical -> legacy -> canonical == normalise(record);
    * normalise is idempotent;
    * a valid legacy row read and written back is unchanged, whatever the
      order its child rows come back in from the database.
    """
    tr = LEGACY_TRANSLATORS[domain]
    record = data.draw(canonical_records(domain))
    header, children = tr.from_canonical(record)

    back = tr.to_canonical(header, children)
    assert isinstance(back, MODELS[domain])
    normalised = tr.normalise(record)
    assert back == normalised
    assert tr.normalise(normalised) == normalised

    shuffled = list(children)
    random.Random(data.draw(st.integers(0, 2**16))).shuffle(shuffled)
    again_header, again_children = tr.from_canonical(tr.to_canonical(header, shuffled))
    assert again_header == header
    assert again_children == children


@pytest.mark.parametrize("domain", DOMAINS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_rows_carry_exactly_the_columns_of_their_tables(domain, data):
    tr = LEGACY_TRANSLATORS[domain]
    header_table, child_table = LEGACY_TABLES[domain]
    header, children = tr.from_canonical(data.draw(canonical_records(domain)))
    assert set(header) == set(header_table.__table__.columns.keys())
    for child in children:
        assert set(child) == set(child_table.__table__.columns.keys())
    for column in header_table.__table__.columns:
        width = getattr(column.type, "length", None)
        if width is not None:
            assert len(header[column.name]) == width, column.name


@pytest.mark.parametrize("domain", DOMAINS)
@settings(max_examples=10, deadline=None)
@given(data=st.data())
def test_the_legacy_key_of_a_record_round_trips_and_names_its_row(domain, data):
    tr = LEGACY_TRANSLATORS[domain]
    record = data.draw(canonical_records(domain))
    legacy = tr.legacy_key(record.key)
    assert tr.canonical_key(legacy) == record.key
    header, _ = tr.from_canonical(record)
    for column, value in tr.key_columns(legacy).items():
        assert header[column] == value
    assert set(tr.key_columns(legacy)) == set(tr.KEY_COLUMNS)


@pytest.mark.parametrize("domain", DOMAINS)
@settings(max_examples=3, deadline=None)
@given(data=st.data())
def test_every_header_row_carries_the_writer_and_time_of_the_change(domain, data):
    tr = LEGACY_TRANSLATORS[domain]
    record = data.draw(canonical_records(domain))
    header, _ = tr.from_canonical(
        record, changed_by="jsmith", changed_at=datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
    )
    assert {c: header[c] for c in AUDIT_COLUMNS} == {
        "LCHGUSER": "JSMITH    ", "LCHGDATE": 20260304, "LCHGTIME": 50607,
    }
    default, _ = tr.from_canonical(record)
    assert default["LCHGUSER"].rstrip() == "COEXIST"


@pytest.mark.parametrize("domain", DOMAINS)
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_the_legacy_row_strategy_draws_rows_that_read_back(domain, data):
    header, children = data.draw(legacy_rows(domain))
    assert LEGACY_TRANSLATORS[domain].to_canonical(header, children).domain == domain
