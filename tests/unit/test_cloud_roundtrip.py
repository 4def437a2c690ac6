"""canonical -> cloud -> canonical is the identity, for every domain, also through JSON."""

from __future__ import annotations

import json
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coexistence.canonical import DOMAINS
from coexistence.cloud.models import DOMAIN_MODELS
from coexistence.translate.cloud import (
    CLOUD_TRANSLATORS,
    RESOURCES,
    canonical_from_json,
    from_canonical,
    to_canonical,
    to_json_dict,
)
from tests.unit.strategies import canonical_records

ROUND_TRIP = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
domains = pytest.mark.parametrize("domain", DOMAINS)


@domains
def test_every_domain_has_a_cloud_translator_and_resource(domain):
    module = CLOUD_TRANSLATORS[domain]
    assert domain == module.DOMAIN and module.MODEL is DOMAIN_MODELS[domain]
    assert RESOURCES[domain] == module.MODEL.resource


@domains
@ROUND_TRIP
@given(data=st.data(), cloud_id=st.uuids(), version=st.integers(0, 2**62))
def test_canonical_to_cloud_and_back_is_the_identity_also_through_json(
    domain, data, cloud_id, version
):
    # One draw checks every path: the canonical strategies dominate the run time.
    record = data.draw(canonical_records(domain))
    translator = CLOUD_TRANSLATORS[domain]
    doc = translator.from_canonical(record, cloud_id=cloud_id, source_version=version)
    assert translator.to_canonical(doc) == record

    with warnings.catch_warnings():
        # A constructed document holding a value of the wrong type would serialise
        # with a PydanticSerializationUnexpectedValue warning: make that a failure.
        warnings.simplefilter("error")
        raw = doc.model_dump_json(by_alias=True)
    back = DOMAIN_MODELS[domain].model_validate_json(raw)
    # The unvalidated fast construction must equal what validation would build.
    assert back == doc
    assert back.id == cloud_id and back.coexist_source_version == version
    assert to_canonical(back) == record
    assert canonical_from_json(domain, raw.encode()) == record

    # A create body leaves the server's fields out and is still a whole document.
    body = to_json_dict(from_canonical(record, cloud_id=cloud_id), body=True)
    assert not {"id", "lastModifiedDateTime", "@odata.etag"} & set(body)
    assert body["number"] == record.key
    created = DOMAIN_MODELS[domain].model_validate_json(json.dumps(body))
    assert created.id is None and to_canonical(created) == record
