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

from coexistence.reconcile.fast import _customer_json, cloud_digest
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


# --------------------------------------------------------------------------- decoded JSON
#
# ``item_of_json`` first digests the decoded document without pydantic
# (``fast._customer_json``).  Whatever it accepts, pydantic must accept with the same
# values: the item (key, digest, natural-key hash, error, record) is the oracle's, from
# the text and from the decoded dict alike.

_SERVER = {
    "@odata.etag": 'W/"3"',
    "id": "7e435a0f-edfc-471f-8d78-0eb14c2dfcf0",
    "lastModifiedDateTime": "2026-12-03T08:00:00.123456Z",
}


def _server_doc(record) -> dict:
    return {**_SERVER, **_doc(record)}


def _same_both(doc: dict) -> None:
    try:
        line = json.dumps(doc).encode()
    except ValueError:
        return
    _same(line)
    _same(json.loads(line))  # as items_of hands a $batch body over: a decoded dict
    got = _customer_json(json.loads(line))
    if got is not None:
        # What the decoded path vouched for, pydantic accepts with the same digests.
        parsed = parse_document("customer", line)
        assert (parsed.number, *cloud_digest("customer", parsed)) == got[:3]


def test_the_sample_data_takes_the_decoded_json_path(monkeypatch):
    import workers.reconcile.cloud as cloud

    docs = [_server_doc(r) for r in iter_customers(300, 4)]
    want = [item_of_slow("customer", json.dumps(d)) for d in docs]

    def refuse(*args, **kwargs):
        raise AssertionError("pydantic validation on the digest path")

    monkeypatch.setattr(cloud, "parse_document", refuse)
    for doc, slow in zip(docs, want, strict=True):
        for form in (json.dumps(doc), json.dumps(doc).encode(), doc):
            item = item_of_json("customer", form)
            assert (item.key, item.digest, item.nk, item.error) == (
                slow.key, slow.digest, slow.nk, slow.error)
    monkeypatch.undo()
    assert item_of_json("customer", json.dumps(docs[0])).record == want[0].record


#: Forms of the server fields and typed values where the JSON decoders and pydantic's
#: lax modes could part ways.
SERVER_EDGE = {
    "id": st.sampled_from([
        None, "7E435A0F-EDFC-471F-8D78-0EB14C2DFCF0", "7e435a0fedfc471f8d780eb14c2dfcf0",
        "{7e435a0f-edfc-471f-8d78-0eb14c2dfcf0}", "urn:uuid:7e435a0f-edfc-471f-8d78-0eb14c2dfcf0",
        "7e435a0f-edfc-471f-8d78-0eb14c2dfcf", "not-a-uuid", 7, ""]),
    "lastModifiedDateTime": st.sampled_from([
        None, "2026-12-03T08:00:00Z", "2026-12-03T08:00:00+23:59", "2026-12-03T08:00:00-00:00",
        "2026-12-03T08:00:00+24:00", "2026-12-03T08:00:00", "2026-02-30T08:00:00Z",
        "2026-12-03T24:00:00Z", "2026-12-03T08:00:60Z", "2026-12-03 08:00:00Z",
        "2026-12-03T08:00:00.1234567Z", "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00", "1999-12-31T23:59:59.5+05:30", "2026-12-03T08:00:00z",
        "2026-13-03T08:00:00Z", 1764748800, ""]),
    "@odata.etag": st.sampled_from([None, "", 'W/"1"', 3, ["x"]]),
    "coexistSourceVersion": st.sampled_from(
        [None, 0, 1, -1, 1.0, True, "1", 2**63, 2**70]),
    "creditLimit": st.sampled_from([
        "10.00", " 10.00", "10.00 ", "+10", "1_000", ".5", "5.", "0010.50", "-0.00", 10, 0,
        -3, 10.5, True, None, "1e2", "NaN", "0x10", "١٠", 10**30, "9" * 25]),
    "creditHold": st.sampled_from([True, False, "false", 0, 1, None]),
    "status": st.sampled_from(["Active", "active", "Prospect", "Blocked", 1, None, ["Active"]]),
    "paymentTermsCode": st.sampled_from(["Net30", "net30", "COD", {}, None]),
    "currencyCode": st.sampled_from(["USD", "usd", "US", "USDX", 840, None]),
    "displayName": st.sampled_from(
        ["ACME", "\ud800", "\ud83d\ude00 smile", "x" * 250, "x" * 251, 5, None, ["a"]]),
    "number": st.sampled_from(["10001", "", "x" * 51, 10001, None, "\ud800"]),
    "addresses": st.sampled_from([[], None, {}, "x", [None], [[]]]),
    "lastModifiedBy": st.sampled_from(["someone", None, 5, {"a": 1}]),
    "last_modified_by": st.just("x"),
    "display_name": st.just("ACME"),
    "unknownField": st.just(1),
}
SERVER_EDGE_ADDRESS = {
    "country": st.sampled_from(["US", "us", "USA", "U", "ÜS", 1, None]),
    "code": st.sampled_from(["B01", "", "x" * 51, 7, None]),
    "addressType": st.sampled_from(["BillTo", "billto", 1, None]),
    "postalCode": st.sampled_from(["15270", "x" * 20, "x" * 21, 15270, None]),
    "addressLine2": st.sampled_from([None, "Suite 1", 3, "\udfff"]),
    "state": st.sampled_from(["PA", "x" * 250, "x" * 251, None]),
    "address_line1": st.just("1 Main St"),
    "extra": st.just("x"),
}


@settings(max_examples=300, deadline=None)
@given(customers(), st.data())
def test_a_server_field_or_typed_value_gives_the_oracles_item(record, data):
    doc = _server_doc(record)
    targets = [(doc, f, v) for f, v in SERVER_EDGE.items()] + [
        (a, f, v) for a in doc["addresses"] for f, v in SERVER_EDGE_ADDRESS.items()]
    for _ in range(data.draw(st.integers(1, 2))):
        parent, field, values = data.draw(st.sampled_from(targets))
        if data.draw(st.integers(0, 5)) == 0:
            parent.pop(field, None)  # a field left out
        else:
            parent[field] = copy.deepcopy(data.draw(values))
    _same_both(doc)


@settings(max_examples=100, deadline=None)
@given(customers(), st.data())
def test_a_hostile_value_in_a_served_document_gives_the_oracles_item(record, data):
    doc = _server_doc(record)
    paths = [(doc, k) for k in doc] + [(a, k) for a in doc["addresses"] for k in a]
    for _ in range(data.draw(st.integers(1, 3))):
        parent, key = data.draw(st.sampled_from(paths))
        parent[key] = copy.deepcopy(data.draw(HOSTILE))
    _same_both(doc)


def test_duplicate_names_and_escapes_in_the_text_give_the_oracles_item():
    record = next(iter(iter_customers(1, 9)))
    body = json.dumps(_server_doc(record))
    for line in (
        body[:-1] + ', "displayName": "OTHER NAME"}',  # a repeated name: the last one wins
        body[:-1] + ', "creditLimit": "-5"}',
        body.replace('"displayName": "', '"displayName": "\\ud800', 1),  # a lone surrogate
        body.replace('"displayName": "', '"displayName": "\\ud83d\\ude00', 1),  # a pair
        body[:-1] + ', "lastModifiedBy": "me"}',
        body + " ",
        body + "x",
        "[" + body + "]",
        "null",
        '"x"',
    ):
        _same(line.encode())
        _same(line)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b'{"a": 1}', b'{"number": "10001"}', b"", b" ", b"\r",
                                 b'{"x": "\\u00e9"}', "{\"é\": 1}".encode()]), max_size=12),
       st.sampled_from([b"\n", b"\r\n"]), st.booleans(), st.data())
def test_export_lines_are_split_from_raw_chunks_as_whole_lines(lines, end, last_end, data):
    """``CloudReader.stream`` splits the export's raw bytes itself (not httpx's
    ``iter_lines``): every non-blank line once, whole, however the body is chunked."""
    from workers.reconcile.cloud import _ndjson_lines

    body = end.join(lines) + (end if last_end else b"")
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]

    class Response:
        def iter_bytes(self):
            yield from chunks

    got = list(_ndjson_lines(Response()))
    assert [g.rstrip(b"\r") for g in got] == [ln for ln in lines if ln.strip()]
    assert all(json.loads(g) is not None for g in got if g.strip())
