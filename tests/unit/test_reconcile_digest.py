"""The digest's common form: both ERPs compute the same digest and natural key for the
same record, and the legacy side needs no normalisation (properties over every domain)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from coexistence.canonical import DOMAINS
from coexistence.reconcile.digest import (
    ROW_NATURAL_KEYS,
    natural_key,
    record_digest,
    rows_digest,
    rows_natural_key,
)
from coexistence.reconcile.tolerances import normalise
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from tests.unit.strategies import canonical_records

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("domain", DOMAINS)
def test_the_cloud_digest_of_a_record_equals_the_legacy_digest_of_its_rows(domain):
    t = LEGACY_TRANSLATORS[domain]

    @SETTINGS
    @given(canonical_records(domain))
    def check(record):
        header, children = t.from_canonical(record, changed_by="JSMITH")
        # The cloud side digests the canonical record; the legacy side its rows as stored.
        assert record_digest(record) == rows_digest(domain, header, children)
        # What the legacy side reads is already in legacy normal form.
        read = t.to_canonical(header, children)
        assert normalise(read) == read
        assert natural_key(normalise(record)) == rows_natural_key(domain, header, children)

    check()


@pytest.mark.parametrize("domain", sorted(ROW_NATURAL_KEYS))
def test_a_changed_field_changes_the_digest(domain):
    t = LEGACY_TRANSLATORS[domain]

    @SETTINGS
    @given(canonical_records(domain))
    def check(record):
        record = normalise(record)
        number = int(record.key)
        other = record.model_copy(update={"key": str(number + 1 if number < 10**9 else 1)})
        assert record_digest(other) != record_digest(record)
        header, children = t.from_canonical(record)
        assert rows_digest(domain, {**header, "LCHGUSER": "SOMEONE"}, children) == \
            rows_digest(domain, header, children)  # the audit columns are not the record

    check()
