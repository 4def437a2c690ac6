"""X12 syntax: read interchanges with every envelope check, write exact envelopes.

Reading takes the separators from the ISA itself (element separator at
position 4, sub-element separator in ISA16, segment terminator right after
it; ISA11 is the repetition separator when it is not a letter or digit, as
from 00501 on), tolerates CR/LF after segment terminators, and reads every
interchange of a file.  Envelope faults are collected, not raised, at the
level they belong to, because each level gets its own answer:

* interchange (``Interchange.errors``): answered by a TA1, nothing inside read -
  ISA not exactly 106 characters or an element off its fixed width, IEA
  missing (truncated file), IEA02 != ISA13, IEA01 != number of groups;
* group (``Group.errors``, AK9 R with AK905 codes): GE missing, GE02 != GS06,
  GE01 != number of sets;
* set (``TransactionSet.errors``, AK5 R with AK502 codes): SE missing,
  SE02 != ST02, SE01 != number of segments from ST to SE.

Every finding names the file, the segment position (in the file, and from ST
as segment 1 inside a set), the element and the value.  Only a file in which
no ISA can be found at all raises ``X12Error``.

Writing builds an interchange from groups of sets with the partner's
separators: fixed-width ISA (always 106 characters), counts and trailer
control numbers computed, never typed.  A value holding a separator is
refused (``X12WriteError`` names the segment and element), never escaped:
X12 has no release character.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from bus.errors import BusinessError

#: The ISA segment is fixed width: 106 characters including its terminator.
ISA_LENGTH = 106
#: Widths of ISA01..ISA16 (ISA16 is one character).
ISA_WIDTHS: tuple[int, ...] = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1)
#: TA1 note code (element I18) for an ISA element off its width or value, by element.
ISA_NOTE_CODES: dict[int, str] = {
    1: "010", 2: "011", 3: "012", 4: "013", 5: "005", 6: "006", 7: "007", 8: "008",
    9: "014", 10: "015", 11: "016", 12: "017", 13: "018", 14: "019", 15: "020", 16: "027",
}
#: Largest control number (ISA13 is 9 digits; GS06 and ST02 are kept in the same range).
MAX_CONTROL_NUMBER = 999_999_999

# TA1 note codes (I18) used here.
TA1_NO_ERROR = "000"
TA1_CONTROL_MISMATCH = "001"
TA1_GROUP_COUNT = "021"
TA1_PREMATURE_END = "023"
TA1_INVALID_CONTENT = "024"
TA1_DUPLICATE = "025"

# AK905 group error codes (716) and AK502 set error codes (718) used here.
GROUP_TRAILER_MISSING = "3"
GROUP_CONTROL_MISMATCH = "4"
GROUP_COUNT_MISMATCH = "5"
SET_NOT_SUPPORTED = "1"
SET_TRAILER_MISSING = "2"
SET_CONTROL_MISMATCH = "3"
SET_COUNT_MISMATCH = "4"
SET_SEGMENTS_IN_ERROR = "5"


class X12Error(BusinessError):
    """A file that cannot be read as X12 at all (no ISA), or a write that cannot be made."""


class X12WriteError(X12Error):
    """A value that cannot be written: it holds a separator, or the envelope is impossible."""


@dataclass(frozen=True, slots=True)
class Separators:
    """The delimiters of one interchange.  ``repetition`` is ``None`` in 00401."""

    element: str = "*"
    component: str = ">"
    segment: str = "~"
    repetition: str | None = None

    def all(self) -> tuple[str, ...]:
        return tuple(s for s in (self.element, self.component, self.segment, self.repetition)
                     if s)


@dataclass(frozen=True, slots=True)
class Finding:
    """One envelope fault: where it is and what is wrong, in words and as a code."""

    code: str
    file: str
    #: 1-based position of the segment in the file.
    file_position: int
    segment: str
    element: str | None
    value: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}: segment {self.file_position} ({self.segment})"
        if self.element:
            where += f", element {self.element}"
        if self.value is not None:
            where += f" = {self.value!r}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Segment:
    tag: str
    #: Elements after the tag: ``elements[0]`` is element 01.
    elements: tuple[str, ...]
    #: 1-based position in the file.
    file_position: int

    def get(self, n: int) -> str:
        """Element ``n`` (1-based, as X12 numbers them); ``""`` when absent."""
        return self.elements[n - 1] if 0 < n <= len(self.elements) else ""

    def name(self, n: int) -> str:
        return f"{self.tag}{n:02d}"


@dataclass(slots=True)
class TransactionSet:
    code: str
    control: str
    #: ST to SE inclusive (SE absent when the set was cut short).
    segments: list[Segment]
    file: str
    errors: list[Finding] = field(default_factory=list)

    @property
    def body(self) -> list[Segment]:
        """The segments between ST and SE."""
        end = -1 if self.segments and self.segments[-1].tag == "SE" else len(self.segments)
        return self.segments[1:end]

    def position(self, seg: Segment) -> int:
        """Position of ``seg`` counted from ST as 1 (AK302)."""
        return seg.file_position - self.segments[0].file_position + 1


@dataclass(slots=True)
class Group:
    functional_id: str
    sender: str
    receiver: str
    control: str
    version: str
    gs: Segment
    sets: list[TransactionSet] = field(default_factory=list)
    errors: list[Finding] = field(default_factory=list)


@dataclass(slots=True)
class Interchange:
    file: str
    separators: Separators
    #: ISA01..ISA16 as received (not stripped).
    isa: tuple[str, ...]
    groups: list[Group] = field(default_factory=list)
    errors: list[Finding] = field(default_factory=list)
    #: TA1 segments outside any group: the partner's interchange acknowledgments of ours.
    ta1s: list[Segment] = field(default_factory=list)
    #: The interchange's own text, ISA through IEA (or to the end of the file).
    text: str = ""
    file_position: int = 1

    @property
    def sender_qualifier(self) -> str:
        return self.isa[4].strip()

    @property
    def sender_id(self) -> str:
        return self.isa[5].strip()

    @property
    def receiver_qualifier(self) -> str:
        return self.isa[6].strip()

    @property
    def receiver_id(self) -> str:
        return self.isa[7].strip()

    @property
    def date(self) -> str:
        return self.isa[8]

    @property
    def time(self) -> str:
        return self.isa[9]

    @property
    def control(self) -> str:
        return self.isa[12]

    @property
    def usage(self) -> str:
        return self.isa[14]


# --------------------------------------------------------------------------- reading


def read(data: str | bytes, *, file: str = "<input>") -> list[Interchange]:
    """Every interchange in ``data``, each with its envelope findings.

    Raises ``X12Error`` only when no interchange can be found at all (empty
    file, not X12, an ISA too short to declare its separators).
    """
    text = _text(data, file)
    start = text.find("ISA")
    if start < 0 or text[:start].strip():
        raise X12Error(f"{file}: not an X12 interchange: it does not start with ISA"
                       + (f" (starts with {text[:20]!r})" if text.strip() else " (empty)"))
    out: list[Interchange] = []
    position = 1
    while start >= 0:
        ic, end, position = _read_one(text, start, file, position)
        out.append(ic)
        nxt = text.find("ISA", end)
        if nxt >= 0 and text[end:nxt].strip():
            ic.errors.append(Finding(TA1_INVALID_CONTENT, file, position, "IEA", None,
                                     text[end:nxt].strip()[:40],
                                     "data after IEA that is not an interchange"))
        if nxt < 0 and text[end:].strip() and not ic.errors:
            ic.errors.append(Finding(TA1_INVALID_CONTENT, file, position, "IEA", None,
                                     text[end:].strip()[:40], "data after IEA"))
        start = nxt
    return out


def _text(data: str | bytes, file: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as exc:
        # X12's basic and extended character sets are single-byte; latin-1 keeps every
        # byte readable so the finding can quote it.
        bad = data[exc.start:exc.start + 1]
        text = data.decode("latin-1")
        if not text.lstrip().startswith("ISA"):
            raise X12Error(f"{file}: not an X12 interchange (byte {bad!r} at offset "
                           f"{exc.start})") from None
        return text


def _separators(text: str, start: int, file: str
                ) -> tuple[Separators, tuple[str, ...], int, str | None]:
    """Separators, ISA elements, the index just past the ISA terminator, and a width fault."""
    if len(text) < start + 4:
        raise X12Error(f"{file}: ISA is cut short ({len(text) - start} characters)")
    element = text[start + 3]
    if element.isalnum() or element.isspace():
        raise X12Error(f"{file}: ISA element separator {element!r} is a letter, digit or "
                       "space")
    pos = start + 4
    parts: list[str] = []
    for _ in range(15):
        nxt = text.find(element, pos)
        if nxt < 0:
            raise X12Error(f"{file}: ISA is cut short: {len(parts) + 1} of 16 elements found")
        parts.append(text[pos:nxt])
        pos = nxt + 1
    if pos + 1 >= len(text):
        raise X12Error(f"{file}: ISA is cut short after ISA15")
    component = text[pos]
    terminator = text[pos + 1]
    parts.append(component)
    end = pos + 2
    fault = None
    if terminator.isalnum() or terminator == element or terminator == " ":
        raise X12Error(f"{file}: ISA segment terminator {terminator!r} after ISA16 is not a "
                       "separator (wrong separators, or ISA16 missing)")
    if len({element, component, terminator}) < 3:
        fault = (f"separators are not distinct: element {element!r}, sub-element "
                 f"{component!r}, segment {terminator!r}")
    rep = parts[10]
    repetition = rep if (len(rep) == 1 and not rep.isalnum() and rep != " ") else None
    return Separators(element, component, terminator, repetition), tuple(parts), end, fault


def _read_one(text: str, start: int, file: str, position: int
              ) -> tuple[Interchange, int, int]:
    seps, isa, pos, fault = _separators(text, start, file)
    ic = Interchange(file=file, separators=seps, isa=isa, file_position=position)
    isa_pos = position
    length = pos - start
    if fault:
        ic.errors.append(Finding("027", file, isa_pos, "ISA", "ISA16", seps.component, fault))
    if length != ISA_LENGTH:
        bad = next((i + 1 for i, (v, w) in enumerate(zip(isa, ISA_WIDTHS, strict=True))
                    if len(v) != w), None)
        code = ISA_NOTE_CODES.get(bad or 0, TA1_INVALID_CONTENT)
        elem = f"ISA{bad:02d}" if bad else None
        detail = (f"; {elem} is {len(isa[bad - 1])} characters, its fixed width is "
                  f"{ISA_WIDTHS[bad - 1]}" if bad else "")
        ic.errors.append(Finding(code, file, isa_pos, "ISA", elem,
                                 isa[bad - 1] if bad else None,
                                 f"ISA is {length} characters, must be exactly "
                                 f"{ISA_LENGTH}{detail}"))
    else:
        if not isa[12].isdigit():
            ic.errors.append(Finding("018", file, isa_pos, "ISA", "ISA13", isa[12],
                                     "interchange control number is not 9 digits"))
        if isa[14] not in ("P", "T", "I"):
            ic.errors.append(Finding("020", file, isa_pos, "ISA", "ISA15", isa[14],
                                     "usage indicator must be P, T or I"))
    position += 1
    group: Group | None = None
    current: TransactionSet | None = None
    iea: Segment | None = None
    end = len(text)
    while pos < len(text):
        nxt = text.find(seps.segment, pos)
        raw = text[pos:] if nxt < 0 else text[pos:nxt]
        seg_end = len(text) if nxt < 0 else nxt + 1
        stripped = raw.strip("\r\n")
        if not stripped.strip():
            pos = seg_end
            continue
        if stripped.startswith("ISA" + seps.element) or stripped.startswith("ISA"):
            # The next interchange begins before this one ended.
            end = pos + (len(raw) - len(raw.lstrip("\r\n")))
            break
        if nxt < 0:
            ic.errors.append(Finding(TA1_PREMATURE_END, file, position, stripped[:3], None,
                                     stripped[:40], "segment without terminator at end of "
                                     f"file (segment terminator is {seps.segment!r})"))
            pos = seg_end
            end = pos
            break
        parts = stripped.split(seps.element)
        seg = Segment(parts[0], tuple(parts[1:]), position)
        position += 1
        pos = seg_end
        if seg.tag == "GS":
            if group is not None:
                _close_group(group, None, current, file, seg.file_position)
                current = None
            group = Group(seg.get(1), seg.get(2), seg.get(3), seg.get(6), seg.get(8), seg)
            ic.groups.append(group)
        elif seg.tag == "ST":
            if group is None:
                ic.errors.append(Finding(TA1_INVALID_CONTENT, file, seg.file_position, "ST",
                                         None, None, "ST outside a functional group (no GS)"))
                continue
            if current is not None:
                _close_set(current, None, file, seg.file_position)
            current = TransactionSet(seg.get(1), seg.get(2), [seg], file)
            group.sets.append(current)
        elif seg.tag == "SE":
            if current is None:
                target = group.errors if group else ic.errors
                target.append(Finding(SET_TRAILER_MISSING, file, seg.file_position, "SE", None,
                                      None, "SE without ST"))
                continue
            current.segments.append(seg)
            _close_set(current, seg, file, seg.file_position)
            current = None
        elif seg.tag == "GE":
            if group is None:
                ic.errors.append(Finding(TA1_INVALID_CONTENT, file, seg.file_position, "GE",
                                         None, None, "GE without GS"))
                continue
            if current is not None:
                _close_set(current, None, file, seg.file_position)
                current = None
            _close_group(group, seg, None, file, seg.file_position)
            group = None
        elif seg.tag == "IEA":
            if group is not None:
                _close_group(group, None, current, file, seg.file_position)
                group = current = None
            iea = seg
            end = pos
            break
        elif current is not None:
            current.segments.append(seg)
        elif seg.tag == "TA1" and group is None and not ic.groups:
            ic.ta1s.append(seg)  # an interchange acknowledgment: before any group
        else:
            target = group.errors if group else ic.errors
            target.append(Finding(TA1_INVALID_CONTENT if group is None else "2", file,
                                  seg.file_position, seg.tag, None, None,
                                  "segment outside a transaction set"))
    else:
        end = len(text)
    if iea is None:
        if group is not None:
            _close_group(group, None, current, file, position)
        ic.errors.append(Finding(TA1_PREMATURE_END, file, position, "IEA", None, None,
                                 "file ends before IEA: the interchange is truncated"))
    else:
        if iea.get(2) != ic.control:
            ic.errors.append(Finding(TA1_CONTROL_MISMATCH, file, iea.file_position, "IEA",
                                     "IEA02", iea.get(2),
                                     f"does not match ISA13 {ic.control!r}"))
        if iea.get(1) != str(len(ic.groups)):
            ic.errors.append(Finding(TA1_GROUP_COUNT, file, iea.file_position, "IEA", "IEA01",
                                     iea.get(1), f"the interchange holds {len(ic.groups)} "
                                     "functional group(s)"))
    ic.text = text[start:end]
    return ic, end, position


def _close_set(ts: TransactionSet, se: Segment | None, file: str, at: int) -> None:
    if se is None:
        ts.errors.append(Finding(SET_TRAILER_MISSING, file, at, ts.segments[0].tag, "SE", None,
                                 f"transaction set {ts.code}/{ts.control} has no SE"))
        return
    if se.get(2) != ts.control:
        ts.errors.append(Finding(SET_CONTROL_MISMATCH, file, se.file_position, "SE", "SE02",
                                 se.get(2), f"does not match ST02 {ts.control!r}"))
    count = len(ts.segments)
    if se.get(1) != str(count):
        ts.errors.append(Finding(SET_COUNT_MISMATCH, file, se.file_position, "SE", "SE01",
                                 se.get(1), f"the set holds {count} segments from ST to SE"))


def _close_group(group: Group, ge: Segment | None, open_set: TransactionSet | None, file: str,
                 at: int) -> None:
    if open_set is not None:
        _close_set(open_set, None, file, at)
    if ge is None:
        group.errors.append(Finding(GROUP_TRAILER_MISSING, file, at, "GS", "GE", None,
                                    f"functional group {group.control} has no GE"))
        return
    if ge.get(2) != group.control:
        group.errors.append(Finding(GROUP_CONTROL_MISMATCH, file, ge.file_position, "GE",
                                    "GE02", ge.get(2), f"does not match GS06 {group.control!r}"))
    if ge.get(1) != str(len(group.sets)):
        group.errors.append(Finding(GROUP_COUNT_MISMATCH, file, ge.file_position, "GE", "GE01",
                                    ge.get(1), f"the group holds {len(group.sets)} "
                                    "transaction set(s)"))


# --------------------------------------------------------------------------- writing

#: A segment to write: tag first, then elements 01, 02, ...
SegmentSpec = Sequence[str]


@dataclass(frozen=True, slots=True)
class SetSpec:
    code: str
    control: int
    #: The segments between ST and SE.
    body: Sequence[SegmentSpec]


@dataclass(frozen=True, slots=True)
class GroupSpec:
    functional_id: str
    sender: str
    receiver: str
    control: int
    sets: Sequence[SetSpec]
    version: str = "004010"


@dataclass(frozen=True, slots=True)
class Party:
    """An ISA identity: qualifier (ISA05/07) and id (ISA06/08)."""

    qualifier: str
    id: str


def set_control(n: int) -> str:
    """ST02 as written: at least 4 digits (the element's minimum length)."""
    return f"{n:04d}"


def write_interchange(
    *,
    sender: Party,
    receiver: Party,
    control: int,
    at: datetime,
    groups: Sequence[GroupSpec] = (),
    separators: Separators = Separators(),
    usage: str = "P",
    ack_requested: bool = False,
    version: str = "00401",
    segment_suffix: str = "",
    extra: Sequence[SegmentSpec] = (),
) -> str:
    """One interchange: ISA, groups (GS ... ST ... SE ... GE), ``extra`` (a TA1), IEA."""
    _check_control(control, "ISA13")
    seps = separators
    isa11 = seps.repetition if seps.repetition else "U"
    fields = [
        "00", " " * 10, "00", " " * 10,
        _fixed(sender.qualifier, 2, "ISA05"), _fixed(sender.id, 15, "ISA06"),
        _fixed(receiver.qualifier, 2, "ISA07"), _fixed(receiver.id, 15, "ISA08"),
        at.strftime("%y%m%d"), at.strftime("%H%M"), isa11, version, f"{control:09d}",
        "1" if ack_requested else "0", usage,
    ]
    for i, value in enumerate(fields, 1):
        _check_value(value, seps, "ISA", i)
    isa = "ISA" + seps.element + seps.element.join(fields) + seps.element + seps.component
    lines = [isa]
    for g in groups:
        _check_control(g.control, "GS06")
        lines.append(_segment(("GS", g.functional_id, g.sender, g.receiver, at.strftime("%Y%m%d"),
                               at.strftime("%H%M"), str(g.control), "X", g.version), seps))
        for s in g.sets:
            _check_control(s.control, "ST02")
            ctrl = set_control(s.control)
            body = [_segment(spec, seps) for spec in s.body]
            lines.append(_segment(("ST", s.code, ctrl), seps))
            lines.extend(body)
            lines.append(_segment(("SE", str(len(body) + 2), ctrl), seps))
        lines.append(_segment(("GE", str(len(g.sets)), str(g.control)), seps))
    lines.extend(_segment(spec, seps) for spec in extra)
    lines.append(_segment(("IEA", str(len(groups)), f"{control:09d}"), seps))
    term = seps.segment + segment_suffix
    return term.join(lines) + term


def _segment(spec: SegmentSpec, seps: Separators) -> str:
    tag, *values = spec
    values = [("" if v is None else str(v)) for v in values]
    while values and values[-1] == "":
        values.pop()  # trailing empty elements are never sent
    for i, v in enumerate(values, 1):
        _check_value(v, seps, tag, i, component_ok=False)
    return seps.element.join([tag, *values])


def _check_value(value: str, seps: Separators, tag: str, n: int, *, component_ok: bool = False
                 ) -> None:
    for s in seps.all():
        if s in value and not (component_ok and s == seps.component):
            raise X12WriteError(f"{tag}{n:02d} value {value!r} contains the separator {s!r}; "
                                "X12 has no release character, so it cannot be sent")
    if "\r" in value or "\n" in value:
        raise X12WriteError(f"{tag}{n:02d} value {value!r} contains a line break")


def _fixed(value: str, width: int, name: str) -> str:
    if len(value) > width:
        raise X12WriteError(f"{name} value {value!r} is longer than its fixed width {width}")
    return value.ljust(width)


def _check_control(n: int, name: str) -> None:
    if not 1 <= n <= MAX_CONTROL_NUMBER:
        raise X12WriteError(f"{name} control number {n} is outside 1..{MAX_CONTROL_NUMBER}")
