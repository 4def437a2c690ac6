"""Element-level checks of 004010 segments against a small dictionary.

Only the segments coexist reads or writes are described (850 in; 855, 856,
810, 997 out; 997 in).  A finding is what a 997 reports: the segment (AK3,
with its position counted from ST as 1 and the loop it sits in) and, for an
element fault, the element (AK4: position, data element number, error code,
a copy of the bad value).  Error codes are the standard's: 720 for segments
(2 unexpected, 3 mandatory missing, 8 has data element errors), 723 for
elements (1 mandatory missing, 3 too many elements, 4 too short, 5 too long,
6 invalid character, 7 invalid code value, 8 invalid date, 9 invalid time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from coexistence.edi.x12 import Segment, TransactionSet

# Segment syntax error codes (720).
SEG_UNEXPECTED = "2"
SEG_MANDATORY_MISSING = "3"
SEG_ELEMENT_ERRORS = "8"
# Element syntax error codes (723).
EL_MANDATORY_MISSING = "1"
EL_TOO_MANY = "3"
EL_TOO_SHORT = "4"
EL_TOO_LONG = "5"
EL_INVALID_CHARACTER = "6"
EL_INVALID_CODE = "7"
EL_INVALID_DATE = "8"
EL_INVALID_TIME = "9"


@dataclass(frozen=True, slots=True)
class El:
    ref: str
    type: str = "AN"
    min: int = 1
    max: int = 80
    mandatory: bool = False
    codes: frozenset[str] | None = None


def _e(ref, type="AN", mn=1, mx=80, m=False, codes=None) -> El:
    return El(ref, type, mn, mx, m, frozenset(codes) if codes else None)


UOM_CODES = frozenset({"EA", "BX", "CS", "CA", "PL", "KG", "M", "CT", "PC", "DZ", "LB"})
_PRODUCT_QUALIFIERS = {"VP", "BP", "UP", "EN", "IN", "SK", "MG", "UI"}


def _ids(n: int, first_mandatory: bool = False) -> tuple[El, ...]:
    out: list[El] = []
    for i in range(n):
        m = first_mandatory and i == 0
        out += [_e("235", "ID", 2, 2, m, _PRODUCT_QUALIFIERS), _e("234", "AN", 1, 48, m)]
    return tuple(out)


#: tag -> element specs (position 1 first).
SEGMENTS: dict[str, tuple[El, ...]] = {
    "BEG": (_e("353", "ID", 2, 2, True, {"00", "01", "04", "05", "06", "07", "22"}),
            _e("92", "ID", 2, 2, True, {"SA", "NE", "RL", "DS", "BK", "KN"}),
            _e("324", "AN", 1, 22, True), _e("328", "AN", 1, 30), _e("373", "DT", 8, 8, True),
            _e("367", "AN", 1, 30), _e("587", "ID", 2, 2)),
    "CUR": (_e("98", "ID", 2, 3, True), _e("100", "ID", 3, 3, True), _e("280", "R", 4, 10)),
    "REF": (_e("128", "ID", 2, 3, True), _e("127", "AN", 1, 30), _e("352", "AN", 1, 80)),
    "PER": (_e("366", "ID", 2, 2, True), _e("93", "AN", 1, 60), _e("365", "ID", 2, 2),
            _e("364", "AN", 1, 80)),
    "FOB": (_e("146", "ID", 2, 2, True), _e("309", "ID", 1, 2), _e("352", "AN", 1, 80)),
    "ITD": (_e("336", "ID", 2, 2), _e("333", "ID", 1, 2), _e("338", "R", 1, 6),
            _e("370", "DT", 8, 8), _e("351", "N0", 1, 3), _e("446", "DT", 8, 8),
            _e("386", "N0", 1, 3), _e("362", "N2", 1, 10)),
    "DTM": (_e("374", "ID", 3, 3, True), _e("373", "DT", 8, 8), _e("337", "TM", 4, 8),
            _e("623", "ID", 2, 2)),
    "N1": (_e("98", "ID", 2, 3, True), _e("93", "AN", 1, 60), _e("66", "ID", 1, 2),
           _e("67", "AN", 2, 80)),
    "N2": (_e("93", "AN", 1, 60, True), _e("93", "AN", 1, 60)),
    "N3": (_e("166", "AN", 1, 55, True), _e("166", "AN", 1, 55)),
    "N4": (_e("19", "AN", 2, 30), _e("156", "ID", 2, 2), _e("116", "ID", 3, 15),
           _e("26", "ID", 2, 3)),
    "PO1": (_e("350", "AN", 1, 20), _e("330", "R", 1, 15, True),
            _e("355", "ID", 2, 2, True, UOM_CODES), _e("212", "R", 1, 17, True),
            _e("639", "ID", 2, 2)) + _ids(5, True),
    "PID": (_e("349", "ID", 1, 1, True, {"F", "S", "X"}), _e("750", "ID", 2, 3),
            _e("559", "ID", 2, 2), _e("751", "AN", 1, 12), _e("352", "AN", 1, 80)),
    "PO4": (_e("356", "N0", 1, 6), _e("357", "R", 1, 8), _e("355", "ID", 2, 2)),
    "SAC": (_e("248", "ID", 1, 1, True, {"A", "C", "N"}), _e("1300", "ID", 4, 4),
            _e("559", "ID", 2, 2), _e("1301", "AN", 1, 10), _e("610", "N2", 1, 15)),
    "CTT": (_e("354", "N0", 1, 6, True), _e("347", "R", 1, 10)),
    "BAK": (_e("353", "ID", 2, 2, True), _e("587", "ID", 2, 2, True, {"AD", "AC", "RD", "AK",
                                                                       "AE", "RJ", "RF", "AH"}),
            _e("324", "AN", 1, 22, True), _e("373", "DT", 8, 8, True), _e("328", "AN", 1, 30),
            _e("326", "AN", 1, 45), _e("367", "AN", 1, 30), _e("127", "AN", 1, 30),
            _e("373", "DT", 8, 8)),
    "ACK": (_e("668", "ID", 2, 2, True, {"IA", "IR", "IQ", "IB", "IC", "IP", "ID", "IS",
                                         "DR"}),
            _e("380", "R", 1, 15), _e("355", "ID", 2, 2, False, UOM_CODES),
            _e("374", "ID", 3, 3), _e("373", "DT", 8, 8), _e("326", "AN", 1, 45)),
    "BSN": (_e("353", "ID", 2, 2, True), _e("396", "AN", 2, 30, True), _e("373", "DT", 8, 8, True),
            _e("337", "TM", 4, 8, True), _e("1005", "ID", 4, 4, False,
                                             {"0001", "0002", "0003", "0004", "0005"})),
    "HL": (_e("628", "AN", 1, 12, True), _e("734", "AN", 1, 12),
           _e("735", "ID", 1, 2, True, {"S", "O", "P", "I", "T"}),
           _e("736", "ID", 1, 1, False, {"0", "1"})),
    "TD1": (_e("103", "AN", 3, 5), _e("80", "N0", 1, 7), _e("23", "ID", 1, 1),
            _e("22", "AN", 1, 30), _e("79", "AN", 1, 50), _e("187", "ID", 1, 2),
            _e("81", "R", 1, 10), _e("355", "ID", 2, 2, False, UOM_CODES)),
    "TD5": (_e("133", "ID", 1, 2), _e("66", "ID", 1, 2), _e("67", "AN", 2, 80),
            _e("91", "ID", 1, 2), _e("387", "AN", 1, 35)),
    "PRF": (_e("324", "AN", 1, 22, True), _e("328", "AN", 1, 30), _e("327", "AN", 1, 8),
            _e("373", "DT", 8, 8)),
    "MAN": (_e("88", "ID", 1, 2, True), _e("87", "AN", 1, 48, True)),
    "LIN": (_e("350", "AN", 1, 20),) + _ids(5, True),
    "SN1": (_e("350", "AN", 1, 20), _e("382", "R", 1, 10, True),
            _e("355", "ID", 2, 2, True, UOM_CODES), _e("646", "R", 1, 9),
            _e("330", "R", 1, 15), _e("355", "ID", 2, 2), _e("728", "ID", 1, 10),
            _e("668", "ID", 2, 2)),
    "BIG": (_e("373", "DT", 8, 8, True), _e("76", "AN", 1, 22, True), _e("373", "DT", 8, 8),
            _e("324", "AN", 1, 22), _e("328", "AN", 1, 30), _e("327", "AN", 1, 8),
            _e("640", "ID", 2, 2), _e("353", "ID", 2, 2)),
    "IT1": (_e("350", "AN", 1, 20), _e("358", "R", 1, 10, True),
            _e("355", "ID", 2, 2, True, UOM_CODES), _e("212", "R", 1, 17, True),
            _e("639", "ID", 2, 2)) + _ids(5, True),
    "TDS": (_e("610", "N2", 1, 15, True), _e("610", "N2", 1, 15), _e("610", "N2", 1, 15),
            _e("610", "N2", 1, 15)),
    "TXI": (_e("963", "ID", 2, 2, True), _e("782", "R", 1, 18), _e("954", "R", 1, 10)),
    "AK1": (_e("479", "ID", 2, 2, True), _e("28", "N0", 1, 9, True)),
    "AK2": (_e("143", "ID", 3, 3, True), _e("329", "AN", 4, 9, True)),
    "AK3": (_e("721", "ID", 2, 3, True), _e("719", "N0", 1, 6, True), _e("447", "AN", 1, 6),
            _e("720", "ID", 1, 3)),
    "AK4": (_e("C030", "AN", 1, 6, True), _e("725", "N0", 1, 4), _e("723", "ID", 1, 3, True),
            _e("724", "AN", 1, 99)),
    "AK5": (_e("717", "ID", 1, 1, True, {"A", "E", "R", "M", "W", "X"}), _e("718", "ID", 1, 3),
            _e("718", "ID", 1, 3), _e("718", "ID", 1, 3), _e("718", "ID", 1, 3),
            _e("718", "ID", 1, 3)),
    "AK9": (_e("715", "ID", 1, 1, True, {"A", "E", "P", "R", "M", "W", "X"}),
            _e("97", "N0", 1, 6, True), _e("123", "N0", 1, 6, True), _e("2", "N0", 1, 6, True),
            _e("716", "ID", 1, 3), _e("716", "ID", 1, 3), _e("716", "ID", 1, 3),
            _e("716", "ID", 1, 3), _e("716", "ID", 1, 3)),
}

#: Transaction set -> (segments it may hold, segments it must hold).
SETS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "850": (frozenset({"BEG", "CUR", "REF", "PER", "FOB", "ITD", "DTM", "N1", "N2", "N3", "N4",
                       "PO1", "PID", "PO4", "SAC", "CTT"}), frozenset({"BEG", "PO1"})),
    "855": (frozenset({"BAK", "CUR", "REF", "PER", "DTM", "N1", "N2", "N3", "N4", "PO1", "ACK",
                       "PID", "CTT"}), frozenset({"BAK"})),
    "856": (frozenset({"BSN", "DTM", "HL", "LIN", "SN1", "PRF", "PO4", "PID", "TD1", "TD5",
                       "TD3", "REF", "MAN", "N1", "N2", "N3", "N4", "CTT"}),
            frozenset({"BSN", "HL"})),
    "810": (frozenset({"BIG", "CUR", "REF", "PER", "N1", "N2", "N3", "N4", "ITD", "DTM", "FOB",
                       "IT1", "PID", "SAC", "TXI", "TDS", "CAD", "CTT"}),
            frozenset({"BIG", "TDS"})),
    "997": (frozenset({"AK1", "AK2", "AK3", "AK4", "AK5", "AK9"}), frozenset({"AK1", "AK9"})),
}

#: Loop a segment opens (AK303), per set.
LOOPS: dict[str, dict[str, str]] = {
    "850": {"N1": "N1", "PO1": "PO1"},
    "855": {"N1": "N1", "PO1": "PO1"},
    "856": {"HL": "HL"},
    "810": {"N1": "N1", "IT1": "IT1"},
    "997": {"AK2": "AK2"},
}

_NUMBER = re.compile(r"^-?(\d+(\.\d*)?|\.\d+)$")
_INTEGER = re.compile(r"^-?\d+$")
_TIME = re.compile(r"^([01]\d|2[0-3])[0-5]\d([0-5]\d(\d{1,2})?)?$")


@dataclass(frozen=True, slots=True)
class ElementError:
    position: int
    ref: str
    code: str
    value: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class SegmentError:
    tag: str
    #: Counted from ST as 1.
    position: int
    loop: str | None
    code: str
    #: 1-based position in the file (for people; the 997 carries ``position``).
    file_position: int
    elements: tuple[ElementError, ...] = ()

    def describe(self, file: str) -> str:
        if not self.elements:
            return f"{file}: segment {self.file_position} ({self.tag}, {self.position} in its " \
                   f"set): {_SEG_WORDS.get(self.code, self.code)}"
        parts = [f"{self.tag}{e.position:02d}"
                 + (f" = {e.value!r}" if e.value is not None else "") + f": {e.reason}"
                 for e in self.elements]
        return (f"{file}: segment {self.file_position} ({self.tag}, {self.position} in its set), "
                + "; ".join(parts))


_SEG_WORDS = {SEG_UNEXPECTED: "segment not expected in this transaction set",
              SEG_MANDATORY_MISSING: "mandatory segment missing",
              SEG_ELEMENT_ERRORS: "segment has data element errors"}


def check_element(value: str, spec: El) -> tuple[str, str] | None:
    """(723 code, reason) when ``value`` breaks ``spec``; ``None`` when it is fine."""
    if value == "":
        return (EL_MANDATORY_MISSING, "mandatory element missing") if spec.mandatory else None
    t = spec.type
    if t == "R":
        if not _NUMBER.match(value):
            return EL_INVALID_CHARACTER, "must be a number"
        digits = len(value.replace("-", "").replace(".", ""))
        length = digits
    elif t.startswith("N"):
        if not _INTEGER.match(value):
            return EL_INVALID_CHARACTER, "must be an integer" + (
                f" with {t[1]} implied decimals" if t != "N0" else "")
        length = len(value.lstrip("-"))
    elif t == "DT":
        length = len(value)
        if length != 8 or not value.isdigit():
            return EL_INVALID_DATE, "not a valid date (CCYYMMDD)"
        try:
            date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except ValueError:
            return EL_INVALID_DATE, "not a valid date (CCYYMMDD)"
    elif t == "TM":
        length = len(value)
        if not _TIME.match(value):
            return EL_INVALID_TIME, "not a valid time (HHMM[SS[d]])"
    else:
        length = len(value)
        if any(ord(c) < 32 for c in value):
            return EL_INVALID_CHARACTER, "holds a control character"
    if length < spec.min:
        return EL_TOO_SHORT, f"is {length} characters, the minimum is {spec.min}"
    if length > spec.max:
        return EL_TOO_LONG, f"is {length} characters, the maximum is {spec.max}"
    if spec.codes is not None and value not in spec.codes:
        return EL_INVALID_CODE, f"not a code this element accepts ({', '.join(sorted(spec.codes))})"
    return None


def check_segment(seg: Segment) -> tuple[ElementError, ...]:
    specs = SEGMENTS.get(seg.tag)
    if specs is None:
        return ()
    errors: list[ElementError] = []
    for i, spec in enumerate(specs, 1):
        fault = check_element(seg.get(i), spec)
        if fault:
            value = seg.get(i) or None
            errors.append(ElementError(i, spec.ref, fault[0], value, fault[1]))
    if len(seg.elements) > len(specs) and any(seg.elements[len(specs):]):
        n = len(specs) + 1
        errors.append(ElementError(n, "", EL_TOO_MANY, None,
                                   f"{seg.tag} has {len(seg.elements)} elements, at most "
                                   f"{len(specs)} are defined"))
    return tuple(errors)


def check_set(ts: TransactionSet) -> list[SegmentError]:
    """Every segment finding of one transaction set (envelope faults are ``ts.errors``)."""
    allowed, required = SETS.get(ts.code, (frozenset(), frozenset()))
    loops = LOOPS.get(ts.code, {})
    out: list[SegmentError] = []
    seen: set[str] = set()
    loop: str | None = None
    for seg in ts.body:
        seen.add(seg.tag)
        loop = loops.get(seg.tag, loop)
        pos = ts.position(seg)
        if seg.tag not in allowed:
            out.append(SegmentError(seg.tag, pos, loop, SEG_UNEXPECTED, seg.file_position))
            continue
        errors = check_segment(seg)
        if errors:
            out.append(SegmentError(seg.tag, pos, loop, SEG_ELEMENT_ERRORS, seg.file_position,
                                    errors))
    for tag in sorted(required - seen):
        last = ts.segments[-1]
        out.append(SegmentError(tag, ts.position(last), None, SEG_MANDATORY_MISSING,
                                last.file_position))
    return out


def check_outbound(code: str, body) -> list[str]:
    """Findings in a set coexist is about to write (``body``: tag-first segment lists).

    Everything coexist sends passes the same element checks it applies to what
    it receives; a finding here stops the document before it gets numbers.
    """
    allowed, required = SETS.get(code, (frozenset(), frozenset()))
    out: list[str] = []
    tags = set()
    for n, spec in enumerate(body, 2):
        tag, *values = [("" if v is None else str(v)) for v in spec]
        tags.add(tag)
        if allowed and tag not in allowed:
            out.append(f"{code} segment {n} ({tag}): not a segment of the {code}")
            continue
        for e in check_segment(Segment(tag, tuple(values), n)):
            shown = f" = {e.value!r}" if e.value is not None else ""
            out.append(f"{code} segment {n} ({tag}), element {tag}{e.position:02d}{shown}: "
                       f"{e.reason}")
    for tag in sorted(required - tags):
        out.append(f"{code}: mandatory segment {tag} missing")
    return out
