"""The simulator's create path serialises a validated document once, by pydantic-core
(``protocol.validate_stored``), and the adapter splices documents serialised the same
way into a ``$batch`` (``cloud_erp._batch_body``): the same stored data, number and
version as the dict path (``validate``), and the same request as ``json.dumps``, for
every domain's documents (hypothesis) and hand-made bodies with non-ASCII text."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coexistence.canonical import DOMAINS
from coexistence.cloud.models import DOMAIN_MODELS, CloudCustomer
from coexistence.translate.cloud import from_canonical, to_json_dict
from tests.unit.strategies import canonical_records
from workers.cloud_erp import _batch_body, _document, _document_bytes
from workers.cloud_sim.protocol import ApiError, validate, validate_stored

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("domain", DOMAINS)
@SETTINGS
@given(data=st.data(), version=st.integers(0, 2**62) | st.none())
def test_the_stored_text_holds_what_the_dict_path_stores(domain, data, version):
    record = data.draw(canonical_records(domain))
    body = to_json_dict(from_canonical(record, source_version=version), body=True)
    model = DOMAIN_MODELS[domain]
    raw, number, stored_version = validate_stored(model, body)
    expected = validate(model, body)
    assert json.loads(raw) == expected
    assert number == expected["number"] == record.key
    assert stored_version == expected.get("coexistSourceVersion") == version
    # The adapter's body bytes are the same document as its dict.
    assert json.loads(_document_bytes(record, version or 0)) == _document(record, version or 0)


def test_a_body_the_dict_path_refuses_is_refused_alike():
    body = {"number": "1", "displayName": "x" * 200, "status": "Active"}
    with pytest.raises(ApiError) as by_dict:
        validate(CloudCustomer, body)
    with pytest.raises(ApiError) as by_text:
        validate_stored(CloudCustomer, body)
    assert (by_text.value.status, by_text.value.targets) == (
        by_dict.value.status, by_dict.value.targets)
    with pytest.raises(ApiError):
        validate_stored(CloudCustomer, [1, 2])


def test_a_batch_body_with_spliced_documents_is_the_json_of_the_operations():
    doc = {"number": "7", "displayName": "Zürich Ærø 東京", "creditLimit": "1.50"}
    ops = [{"id": "0", "method": "POST", "url": "customers",
            "headers": {"Idempotency-Key": "k:create"},
            "body": json.dumps(doc, ensure_ascii=False).encode()},
           {"id": "1", "method": "GET", "url": "customers(number='7')"},
           {"id": "2", "method": "PATCH", "url": "customers(x)", "body": doc}]
    parsed = json.loads(_batch_body(ops))
    assert parsed == {"requests": [{**ops[0], "body": doc}, ops[1], ops[2]]}
