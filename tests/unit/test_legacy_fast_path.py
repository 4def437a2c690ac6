"""The legacy translators' fast path: a record built without pydantic's validation.

Some legacy ``to_canonical`` build the canonical record with ``construct`` when
their own field-by-field checks (``_read`` -> ``proven``) say pydantic would
accept the values unchanged.  These properties hold them to it: whenever a row
is ``proven``, the constructed record is indistinguishable from the validated
one (equality, JSON, repr, fields set, hash, types), also for rows whose text
columns hold hostile values (too long, lone surrogates, bad codes); and a row
that is not proven still reads exactly as through validation.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from coexistence.canonical import MODELS
from coexistence.errors import TranslationError
from coexistence.translate.common import Where
from coexistence.translate.legacy import LEGACY_TRANSLATORS
from tests.unit.strategies import legacy_rows

PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

#: Domain -> (header text columns, child text columns) a hostile value may land in.
TEXT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "customer": (
        ("CUSTNAME", "TAXID", "CUSTGRP", "REGION", "CONTNAME", "CONTEMAIL", "CONTPHONE",
         "CURRCODE"),
        ("SITENO", "SITENAME", "ADDR1", "ADDR2", "CITY", "STATE", "ZIPCODE", "COUNTRY"),
    ),
    "shipment": (("WHSE", "CARRIER", "TRACKNO"), ("ITEMNO",)),
    "price": (("ITEMNO", "CURRCODE"), ()),
    "invoice": (("CURRCODE",), ("ITEMNO", "ITEMDESC")),
    "order": (("SHIPTO", "CUSTPO", "CURRCODE"), ("ITEMNO",)),
    "product": (("ITEMNO", "ITEMDESC", "CURRCODE"), ()),
    "inventory": (("WHSE", "ITEMNO"), ()),
}
#: Domain -> (header integer columns, child integer columns), for the edge test.
INT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "customer": (("CRLIMIT",), ()),
    "shipment": (("PICKDATE", "PICKTIME", "DLVDATE", "DLVTIME"), ("LINENO", "ORDLINE", "SHPQTY")),
    "price": (("BRKQTY1", "BRKQTY2", "BRKQTY3", "BRKPRC1", "BRKPRC2", "EFFDATE", "EXPDATE"), ()),
    "invoice": (("INVDATE", "DUEDATE", "TAXAMT", "AMTPAID"), ("LINENO", "INVQTY", "UNITPRC")),
    "order": (("ORDDATE", "ORDTIME", "REQDATE"), ("LINENO", "ORDQTY", "UNITPRC")),
    "product": (("WEIGHTG", "LISTPRC", "STDCOST"), ()),
    "inventory": (("ONHAND", "ALLOC"), ()),
}
_INT_EDGES = [-1, 0, 1, 2, 20240229, 20230229, 235959, 240000, 2**31, 10**20]
FAST_DOMAINS = sorted(TEXT_COLUMNS)

# Values at and around the canonical limits (2, 10, 12, 20, 30, 40, 120, 200
# characters), in ASCII, accented and astral text, plus what pydantic refuses.
_EDGES = [
    s * n for s in ("X", "é", "\U0001f600") for n in (0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 30,
                                                       31, 40, 41, 120, 121, 200, 201)
] + ["\ud800", "A\udfffB", "US", "us", "U1", "ÜS", "A B", "-A", "A-B.C:D/E_F", "A\n", "ZAR", "USD"]
hostile_text = st.sampled_from(_EDGES) | st.text(
    st.characters(min_codepoint=1, max_codepoint=0x1F600, exclude_categories=()), max_size=45
)


def _both_ways(domain: str, header, children):
    """(fast record or None when not proven, validated record); raises TranslationError."""
    tr = LEGACY_TRANSLATORS[domain]
    # Where the translator itself names errors: composite keys have a helper.
    where = tr._where(header) if hasattr(tr, "_where") else Where(domain, header[tr.KEY_COLUMNS[0]])
    values, proven = tr._read(header, children)
    slow_values = copy.deepcopy(values)
    slow = tr._build(slow_values, False, where)
    fast = tr._build(values, True, where) if proven else None
    return fast, slow


def _assert_same(fast, slow) -> None:
    assert type(fast) is type(slow) is MODELS[slow.domain]
    assert fast == slow
    assert fast.model_dump_json() == slow.model_dump_json()
    assert repr(fast) == repr(slow)
    assert fast.model_fields_set == slow.model_fields_set
    assert hash(fast) == hash(slow)
    for name in type(slow).model_fields:
        a, b = getattr(fast, name), getattr(slow, name)
        assert type(a) is type(b), name
        if isinstance(b, tuple):
            for x, y in zip(a, b, strict=True):
                assert type(x) is type(y)
                assert x.model_fields_set == y.model_fields_set
                assert list(x.__dict__) == list(y.__dict__)
    assert list(fast.__dict__) == list(slow.__dict__)


@pytest.mark.parametrize("domain", FAST_DOMAINS)
@PROPERTY
@given(data=st.data())
def test_a_proven_row_builds_the_very_record_validation_builds(domain, data):
    header, children = data.draw(legacy_rows(domain))
    fast, slow = _both_ways(domain, header, children)
    if fast is not None:
        _assert_same(fast, slow)
    assert LEGACY_TRANSLATORS[domain].to_canonical(header, children) == slow


@pytest.mark.parametrize("domain", FAST_DOMAINS)
@PROPERTY
@given(data=st.data())
def test_a_hostile_text_value_is_never_proven_unless_validation_accepts_it(domain, data):
    header, children = data.draw(legacy_rows(domain))
    header_columns, child_columns = TEXT_COLUMNS[domain]
    value = data.draw(hostile_text)
    if children and data.draw(st.booleans()):
        i = data.draw(st.integers(0, len(children) - 1))
        column = data.draw(st.sampled_from(child_columns))
        children = [dict(row) for row in children]
        children[i][column] = value
    else:
        header = dict(header, **{data.draw(st.sampled_from(header_columns)): value})
    tr = LEGACY_TRANSLATORS[domain]
    try:
        values, proven = tr._read(header, children)
    except TranslationError:
        assume(False)  # refused before any model is built: not this property's business
    if proven:
        # The fast path claims validity: validation must agree, value for value.
        fast, slow = _both_ways(domain, header, children)
        _assert_same(fast, slow)
    # Proven or not, the public function reads the row exactly as validation does.
    assert _outcome(lambda: tr.to_canonical(header, children)) == _outcome(
        lambda: _both_ways(domain, header, children)[1]
    )


def _check_row(domain: str, header, children) -> bool:
    """The fast-path property for one row; whether it was proven."""
    tr = LEGACY_TRANSLATORS[domain]
    try:
        proven = tr._read(header, children)[1]
    except TranslationError:
        return False
    if proven:
        fast, slow = _both_ways(domain, header, children)
        _assert_same(fast, slow)
    assert _outcome(lambda: tr.to_canonical(header, children)) == _outcome(
        lambda: _both_ways(domain, header, children)[1]
    )
    return proven


@pytest.mark.parametrize("domain", FAST_DOMAINS)
def test_every_edge_value_in_every_text_column_is_proven_only_when_valid(domain):
    """Exhaustive over columns x edge values (the property test samples them)."""
    from coexistence.sample import SampleSpec

    tr = LEGACY_TRANSLATORS[domain]
    spec = SampleSpec(customers=3, seed=2, products=100, warehouses=1, orders_per_customer=4)
    proven = refused = 0
    for record in spec.iter(domain, 0, 3):
        header, children = tr.from_canonical(record)
        _check_row(domain, header, [])  # a shipment needs lines; a customer does not
        no_breaks = {c: 0 for c in header if c.startswith(("BRKQTY", "BRKPRC"))}
        _check_row(domain, dict(header, **no_breaks), children)  # a price needs a break
        for value, (header_columns, child_columns) in [
            *((v, TEXT_COLUMNS[domain]) for v in _EDGES),
            *((v, INT_COLUMNS[domain]) for v in _INT_EDGES),
        ]:
            for column in header_columns:
                ok = _check_row(domain, dict(header, **{column: value}), children)
                proven, refused = proven + ok, refused + (not ok)
            for column in child_columns:
                for i in range(len(children)):
                    rows = [dict(row) for row in children]
                    rows[i][column] = value
                    ok = _check_row(domain, header, rows)
                    proven, refused = proven + ok, refused + (not ok)
    assert proven and refused  # both sides of the fast path were exercised


def _outcome(read):
    try:
        return "read", read()
    except TranslationError as exc:
        return "refused", str(exc)


@pytest.mark.parametrize("domain", FAST_DOMAINS)
def test_the_sample_records_take_the_fast_path(domain):
    """The benchmark's rows (accented names included) are proven, not validated."""
    from coexistence.sample import SampleSpec

    tr = LEGACY_TRANSLATORS[domain]
    spec = SampleSpec(customers=50, seed=1, products=100, warehouses=1)
    for record in spec.iter(domain, 0, 50):
        header, children = tr.from_canonical(record)
        assert tr._read(header, children)[1], record.key


def test_the_fast_path_key_check_is_the_canonical_key_constraint():
    """``is_key`` + ``len <= 40`` hard-code the canonical ``Key``: a change there must show."""
    from coexistence.canonical.models import Customer
    from coexistence.translate.common import is_key

    metadata = {type(m).__name__: m for m in Customer.model_fields["key"].metadata}
    assert metadata["MaxLen"].max_length == 40
    assert metadata["MinLen"].min_length == 1
    assert metadata["_PydanticGeneralMetadata"].pattern == (
        "^" + is_key.__self__.pattern + "$"
    )
