"""Whatever a cloud document holds, translation yields a canonical record or a TranslationError.

Mutates the good table documents at random places with hostile values: no
pydantic ValidationError, KeyError or TypeError may leak to a caller.
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coexistence.canonical import MODELS
from coexistence.errors import TranslationError
from coexistence.translate.cloud import canonical_from_json
from tests.unit.test_cloud_bad_input import DOCS

HOSTILE = st.sampled_from([
    None, "", " ", "x" * 300, -1, 0, 1.5, 10**40, "-1", "2.5", "NaN", "Infinity", "1E+999999",
    True, [], {}, [{}], {"a": 1}, "2023-13-45", "2026-03-02T14:30:00", "Active", "Draft",
    "PendingApproval", "ZAR", "ünïcödé", "\u0000",
]) | st.text(max_size=8) | st.integers() | st.decimals(allow_nan=False).map(str)


def _paths(value, prefix=()):
    """Every (container path, key) in a JSON value, leaves and branches alike."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix, k
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield prefix, i
            yield from _paths(v, (*prefix, i))


@pytest.mark.parametrize("domain", sorted(DOCS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_mutated_cloud_document_translates_or_is_refused_by_name(domain, data):
    doc = copy.deepcopy(DOCS[domain])
    for _ in range(data.draw(st.integers(1, 3))):
        parent_path, key = data.draw(st.sampled_from(list(_paths(doc))))
        parent = doc
        for p in parent_path:
            parent = parent[p]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        # A copy: sampled_from hands out the same [] / {} objects, and a shared one
        # mutated into itself would make the document self-referential.
        if action == "replace":
            parent[key] = copy.deepcopy(data.draw(HOSTILE))
        elif action == "delete" and isinstance(parent, dict):
            del parent[key]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(min_size=1, max_size=6))] = copy.deepcopy(data.draw(HOSTILE))
    raw = json.dumps(doc).encode()
    try:
        record = canonical_from_json(domain, raw)
    except TranslationError as err:
        assert err.domain == domain and err.field
    else:
        assert isinstance(record, MODELS[domain])
