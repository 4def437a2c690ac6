"""The sample fits both ERPs: every record survives legacy and cloud translation.

The legacy ERP is narrower than the canonical model (numeric keys of 10
digits, site ids of 8, upper-case codes, 30-character names), so this is what
makes the sample loadable into the legacy reference database at all.
"""

from __future__ import annotations

import pytest

from coexistence.canonical import DOMAINS
from coexistence.sample import SampleSpec
from coexistence.translate.cloud import CLOUD_TRANSLATORS
from coexistence.translate.legacy import LEGACY_TRANSLATORS

SPEC = SampleSpec(customers=20, seed=5, products=30, prices_per_customer=2,
                  orders_per_customer=2, max_order_lines=5)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_sample_record_comes_back_from_the_legacy_erp_as_its_documented_normalisation(
    domain,
):
    translator = LEGACY_TRANSLATORS[domain]
    for record in SPEC.iter(domain):
        header, children = translator.from_canonical(record)
        assert translator.to_canonical(header, children) == translator.normalise(record)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_sample_record_comes_back_from_the_cloud_erp_unchanged(domain):
    translator = CLOUD_TRANSLATORS[domain]
    for record in SPEC.iter(domain):
        assert translator.to_canonical(translator.from_canonical(record)) == record


def test_the_sample_exercises_the_legacy_name_truncation():
    customer = LEGACY_TRANSLATORS["customer"]
    records = list(SPEC.iter("customer"))
    assert any(customer.normalise(r).name != r.name.upper() for r in records)
