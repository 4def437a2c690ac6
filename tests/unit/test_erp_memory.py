"""What the in-memory ERP does beyond the shared contract."""

from __future__ import annotations

import pytest

from bus.errors import BusinessError
from coexistence.errors import TranslationError
from tests.contracts.erp_contract import PERSON, new_key, sample
from workers.erp_memory import IdempotencyConflict, InMemoryErp


def test_an_idempotency_key_reused_for_another_write_is_a_business_error():
    erp, key = InMemoryErp(), new_key()
    erp.upsert(sample("customer", 1), source_version=1, idempotency_key=key)
    with pytest.raises(IdempotencyConflict) as caught:
        erp.upsert(sample("customer", 1, 1), source_version=2, idempotency_key=key)
    assert isinstance(caught.value, BusinessError)
    assert erp.get("customer", "10001") == sample("customer", 1)


def test_an_unknown_domain_is_refused_as_a_translation_error():
    with pytest.raises(TranslationError, match="unknown domain"):
        InMemoryErp().get("widgets", "1")


def test_a_persons_delete_is_in_the_feed_and_keeps_the_applied_version():
    erp = InMemoryErp()
    erp.upsert(sample("product", 1), source_version=4, idempotency_key=new_key())
    erp.person_delete("product", "SKU-1001", PERSON)
    assert erp.get("product", "SKU-1001") is None
    assert erp.applied_version("product", "SKU-1001") == 4
    assert [(c.op, c.writer) for c in erp.read(0, 10)] == [
        ("upsert", "COEXIST"),
        ("delete", PERSON),
    ]
