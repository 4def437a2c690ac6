"""The cloud side's fast digest (``coexistence.reconcile.fast``) against its oracle.

``item_of_json`` takes the fast path where it can vouch for a document and the
canonical path otherwise; ``item_of_slow`` always takes the canonical path
(``record_digest(normalise(canonical_from_json(...)))``).  Whatever the document,
both must give the same item: key, digest, natural-key hash, error, and (when
a comparison loads it) the same normalised record.
"""

from __future__ import annotations

import copy
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coexistence.reconcile.fast import cloud_digest
from coexistence.sample import iter_customers
from coexistence.translate.cloud import from_canonical, parse_document, to_json_bytes
from tests.unit.strategies import customers
from tests.unit.test_cloud_fuzz import HOSTILE
from workers.reconcile.cloud import item_of_json, item_of_slow


def _outcome(fn, line):
    try:
        return fn("customer", line), None
    except Exception as exc:  # noqa: BLE001 - the refusal itself is compared
        return None, (type(exc), str(exc))


def _same(line: bytes) -> None:
    slow, slow_exc = _outcome(item_of_slow, line)
    fast, fast_exc = _outcome(item_of_json, line)
    assert fast_exc == slow_exc
    if slow is None:
        return
    assert (fast.key, fast.digest, fast.nk, fast.error) == (
        slow.key,
        slow.digest,
        slow.nk,
        slow.error,
    )
    if slow.error is None:
        assert fast.record == slow.record


def _doc(record) -> dict:
    return json.loads(to_json_bytes(from_canonical(record, source_version=1), body=True))


def test_the_sample_data_takes_the_fast_path_with_the_oracles_digests():
    taken = 0
    for record in iter_customers(500, 3):
        line = to_json_bytes(from_canonical(record, source_version=1), body=True)
        _same(line)
        taken += cloud_digest("customer", parse_document("customer", line)) is not None
    assert taken == 500  # every valid sample record is vouched for: the path is used


@settings(max_examples=100, deadline=None)
@given(customers())
def test_a_valid_customer_has_the_oracles_digest(record):
    _same(json.dumps(_doc(record)).encode())


#: Values aimed at the checks the fast path makes for the oracle: case and
#: Unicode that upper-cases longer (``ß``), blanks that only show once stored,
#: keys legacy cannot pad, site codes it cannot hold, sub-cent and huge amounts.
EDGE_TEXT = st.sampled_from(
    [
        "",
        " ",
        "   ",
        "a",
        "ß" * 40,
        "ﬃ" * 35,
        "ǅ",
        "İstanbul",
        "x" * 31,
        "x" * 29 + " y",
        " leading",
        "trailing   ",
        "ünïcödé straße",
        "\u3000",
        "a\tb",
        "ŉ" * 16,
        "x" * 121,
        "x" * 201,
        "x" * 249,
    ]
)
EDGE = {
    "number": st.sampled_from(["0", "00", "012", "1" * 10, "1" * 11, "A1", "12 ", "١٢"]),
    "displayName": EDGE_TEXT,
    "creditLimit": st.sampled_from(
        [
            "0",
            "-0",
            "0.005",
            "0.0049",
            "-0.001",
            "1E+2",
            "1e-9",
            "9999999999999.995",
            "99999999999999999",
            "12.345",
        ]
    ),
    "currencyCode": st.sampled_from(["USD", "ZAR", "usd"]),
    "taxRegistrationNumber": st.none() | EDGE_TEXT,
    "customerGroupCode": EDGE_TEXT,
    "salesRegionCode": EDGE_TEXT,
    "contactName": st.none() | EDGE_TEXT,
    "email": st.none() | EDGE_TEXT,
    "phoneNumber": st.none() | EDGE_TEXT,
}
EDGE_ADDRESS = {
    "code": st.sampled_from(
        ["B001", "b001", "S001", "S 01", "ABCDEFGHI", "ABCDEFGH", "-X", "B001\n"]
    ),
    "name": EDGE_TEXT,
    "addressLine1": EDGE_TEXT,
    "addressLine2": st.none() | EDGE_TEXT,
    "city": EDGE_TEXT,
    "state": EDGE_TEXT,
    "postalCode": st.sampled_from(["", " ", "1", "12345 6789", "A" * 11, "A" * 13, " 1"]),
    "addressType": st.sampled_from(["BillTo", "ShipTo", "Other"]),
}


@settings(max_examples=150, deadline=None)
@given(customers(), st.data())
def test_an_edge_value_gives_the_oracles_item(record, data):
    # One or two edge values per document, so that each check is met alone (with
    # many at once, the first refusal hides the others).
    doc = _doc(record)
    targets = [(doc, f, v) for f, v in EDGE.items()] + [
        (a, f, v) for a in doc["addresses"] for f, v in EDGE_ADDRESS.items()
    ]
    for _ in range(data.draw(st.integers(1, 2))):
        parent, field, values = data.draw(st.sampled_from(targets))
        parent[field] = data.draw(values)
    if doc["addresses"] and data.draw(st.integers(0, 9)) == 0:
        doc["addresses"].append(copy.deepcopy(doc["addresses"][0]))  # a repeated site
    _same(json.dumps(doc).encode())


@settings(max_examples=100, deadline=None)
@given(customers(), st.data())
def test_a_hostile_value_anywhere_gives_the_oracles_item(record, data):
    doc = _doc(record)
    paths = [((), k) for k in doc] + [
        (("addresses", i), k) for i, a in enumerate(doc["addresses"]) for k in a
    ]
    for _ in range(data.draw(st.integers(1, 3))):
        (parent_path, key) = data.draw(st.sampled_from(paths))
        parent = doc
        for p in parent_path:  # an earlier draw may have replaced the path's container
            if not isinstance(parent, (dict, list)) or (
                    isinstance(parent, list) and not 0 <= p < len(parent)) or (
                    isinstance(parent, dict) and p not in parent):
                parent = None
                break
            parent = parent[p]
        if isinstance(parent, dict) and key in parent:
            parent[key] = copy.deepcopy(data.draw(HOSTILE))
    try:
        line = json.dumps(doc).encode()
    except ValueError:
        return
    _same(line)


@pytest.mark.parametrize("credit_limit", ["0.005", "0.004999", "1E+3", "-0", "12.3450"])
def test_decimals_round_as_the_oracle_rounds(credit_limit):
    record = next(iter(iter_customers(1, 5)))
    doc = _doc(record)
    doc["creditLimit"] = credit_limit
    _same(json.dumps(doc).encode())
    assert Decimal(credit_limit) >= 0
