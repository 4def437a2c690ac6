"""X12 syntax: separators from the ISA, CR/LF, several interchanges, every envelope check,
exact envelopes on write."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coexistence.edi import x12

AT = datetime(2026, 3, 4, 5, 6, tzinfo=UTC)
BODY = [["BEG", "00", "SA", "PO-1", "", "20260304"], ["PO1", "1", "2", "EA", "3.5", "", "VP",
                                                          "WID-1"], ["CTT", "1"]]


def interchange(control=7, sets=(("850", 1, BODY),), separators=x12.Separators(), suffix="\n",
                gs=3):
    return x12.write_interchange(
        sender=x12.Party("ZZ", "BUYER"), receiver=x12.Party("ZZ", "SELLER"), control=control,
        at=AT, separators=separators, segment_suffix=suffix,
        groups=[x12.GroupSpec("PO", "BUYER", "SELLER", gs,
                              [x12.SetSpec(c, n, b) for c, n, b in sets])])


def test_a_written_isa_is_exactly_106_characters_with_fixed_width_ids():
    text = interchange()
    isa = text.split("\n")[0]
    assert len(isa) == 106
    assert isa[3] == "*" and isa[104] == ">" and isa[105] == "~"
    assert "*ZZ*BUYER          *" in isa and "*000000007*" in isa


def test_counts_and_trailer_numbers_are_computed_and_read_back_clean():
    text = interchange(sets=(("850", 1, BODY), ("850", 2, BODY)))
    [ic] = x12.read(text, file="a.edi")
    assert ic.errors == []
    [g] = ic.groups
    assert g.errors == [] and [s.control for s in g.sets] == ["0001", "0002"]
    assert all(s.errors == [] for s in g.sets)
    assert "SE*5*0001~" in text and "GE*2*3~" in text and "IEA*1*000000007~" in text


def test_separators_are_taken_from_the_isa_of_each_interchange():
    odd = x12.Separators(element="|", component="^", segment="\n")
    text = interchange(separators=odd, suffix="") + interchange(control=8)
    first, second = x12.read(text, file="two.edi")
    assert first.separators == odd and second.separators == x12.Separators()
    assert first.errors == second.errors == []
    assert first.groups[0].sets[0].body[0].get(3) == "PO-1"
    assert second.control == "000000008"


def test_cr_lf_after_terminators_is_tolerated():
    text = interchange(suffix="\r\n")
    [ic] = x12.read(text.encode("ascii"), file="crlf.edi")
    assert ic.errors == [] and ic.groups[0].sets[0].errors == []


def test_an_isa_off_its_width_names_the_element_and_its_value():
    text = interchange().replace("*ZZ*BUYER          *", "*ZZ*BUYER*", 1)
    [ic] = x12.read(text, file="short.edi")
    [f] = ic.errors
    assert f.code == "006" and f.element == "ISA06" and f.value == "BUYER"
    assert "ISA is 96 characters, must be exactly 106" in str(f) and "short.edi" in str(f)


def test_a_truncated_file_is_a_premature_end():
    text = interchange()
    [ic] = x12.read(text[: text.index("SE*")], file="cut.edi")
    codes = [f.code for f in ic.errors]
    assert x12.TA1_PREMATURE_END in codes
    assert ic.groups[0].errors[0].code == x12.GROUP_TRAILER_MISSING
    assert ic.groups[0].sets[0].errors[0].code == x12.SET_TRAILER_MISSING


@pytest.mark.parametrize(("old", "new", "level", "code", "element"), [
    ("IEA*1*000000007", "IEA*1*000000009", "ic", x12.TA1_CONTROL_MISMATCH, "IEA02"),
    ("IEA*1*000000007", "IEA*2*000000007", "ic", x12.TA1_GROUP_COUNT, "IEA01"),
    ("GE*1*3", "GE*1*4", "group", x12.GROUP_CONTROL_MISMATCH, "GE02"),
    ("GE*1*3", "GE*2*3", "group", x12.GROUP_COUNT_MISMATCH, "GE01"),
    ("SE*5*0001", "SE*5*0002", "set", x12.SET_CONTROL_MISMATCH, "SE02"),
    ("SE*5*0001", "SE*6*0001", "set", x12.SET_COUNT_MISMATCH, "SE01"),
])
def test_every_trailer_check_names_the_element_value_and_segment(old, new, level, code, element):
    [ic] = x12.read(interchange().replace(old, new), file="bad.edi")
    found = {"ic": ic.errors, "group": ic.groups[0].errors,
             "set": ic.groups[0].sets[0].errors}[level]
    [f] = found
    assert (f.code, f.element, f.value) == (code, element, new.split("*")[-2 if element.endswith(
        "01") else -1])
    assert f.file == "bad.edi" and f.file_position > 1


def test_a_file_that_is_not_x12_raises_a_clear_error():
    with pytest.raises(x12.X12Error, match="empty.edi: not an X12 interchange"):
        x12.read(b"", file="empty.edi")
    with pytest.raises(x12.X12Error, match="does not start with ISA"):
        x12.read(b"UNB+UNOC:3+X'", file="edifact.edi")


def test_a_segment_terminator_that_is_a_letter_is_wrong_separators():
    text = interchange().replace(">~", ">A", 1)
    with pytest.raises(x12.X12Error, match="wrong separators"):
        x12.read(text, file="seps.edi")


def test_a_value_holding_a_separator_is_refused_on_write_naming_the_element():
    body = [["PID", "F", "", "", "", "10*20 bolts"]]
    with pytest.raises(x12.X12WriteError, match=r"PID05 value '10\*20 bolts'"):
        interchange(sets=(("850", 1, body),))


def test_control_numbers_outside_nine_digits_are_refused():
    with pytest.raises(x12.X12WriteError, match="ISA13"):
        interchange(control=1_000_000_000)


_value = st.text(st.characters(min_codepoint=32, max_codepoint=126,
                               blacklist_characters="*>~"), max_size=12)
_segments = st.lists(st.tuples(st.sampled_from(["REF", "N1", "DTM", "PID"]),
                               st.lists(_value, max_size=5)).map(lambda t: [t[0], *t[1]]),
                     min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["850", "855", "856", "810", "997"]),
                          st.integers(1, 10**9 - 1), _segments), min_size=1, max_size=4),
       st.integers(1, 10**9 - 1), st.integers(1, 10**9 - 1))
def test_anything_coexist_writes_passes_its_own_envelope_checks(sets, control, gs):
    text = interchange(control=control, sets=sets, gs=gs)
    [ic] = x12.read(text, file="p")
    assert ic.errors == [] and len(ic.text.split("\n")[0]) == 106
    [g] = ic.groups
    assert g.errors == [] and len(g.sets) == len(sets)
    assert all(s.errors == [] for s in g.sets)
    assert ic.control == f"{control:09d}" and g.control == str(gs)
