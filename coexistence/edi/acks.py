"""Acknowledgments: the 997 we answer with, the TA1 for a broken envelope, and reading 997s.

A 997 answers each functional group received (AK1) and each set in it (AK2,
AK3/AK4 for every segment and element finding, AK5 verdict); AK9 gives the
group's verdict and counts.  A 997 is never answered with a 997.  A TA1 is
sent instead of a 997 when the interchange envelope itself is broken (nothing
inside was read), and with note 025 for a duplicate interchange.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from coexistence.edi import validate
from coexistence.edi.x12 import (
    SET_SEGMENTS_IN_ERROR,
    Group,
    Interchange,
    TransactionSet,
)

#: AK404 quotes at most this many characters of the bad value.
AK404_CHARS = 99
#: Group functional id (GS01) of each set coexist trades.
FUNCTIONAL_IDS = {"850": "PO", "855": "PR", "856": "SH", "810": "IN", "997": "FA"}


@dataclass(slots=True)
class SetVerdict:
    """The 997's answer to one set: AK5 code (A, E, R), AK502.. codes, segment findings."""

    code: str
    control: str
    status: str = "A"
    reasons: list[str] = field(default_factory=list)
    findings: list[validate.SegmentError] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.status in ("A", "E")


@dataclass(slots=True)
class GroupVerdict:
    functional_id: str
    control: str
    sets: list[SetVerdict]
    status: str = "A"
    reasons: list[str] = field(default_factory=list)


def judge_set(ts: TransactionSet, supported: Sequence[str]) -> SetVerdict:
    """Envelope faults and segment findings of one set -> its AK5 verdict.

    Any envelope fault, an unsupported set, a missing mandatory segment or an
    element error rejects the set (coexist cannot act on an element it cannot
    read); a segment it does not read is noted and the set accepted with errors.
    """
    verdict = SetVerdict(ts.code, ts.control)
    if ts.code not in supported:
        verdict.status = "R"
        verdict.reasons.append("1")
        return verdict
    for f in ts.errors:
        verdict.reasons.append(f.code)
    verdict.findings = validate.check_set(ts)
    fatal = any(f.code != validate.SEG_UNEXPECTED for f in verdict.findings)
    if ts.errors or fatal:
        verdict.status = "R"
        if verdict.findings and SET_SEGMENTS_IN_ERROR not in verdict.reasons:
            verdict.reasons.append(SET_SEGMENTS_IN_ERROR)
    elif verdict.findings:
        verdict.status = "E"
    return verdict


def judge_group(group: Group, supported: Sequence[str]) -> GroupVerdict:
    sets = [judge_set(ts, supported) for ts in group.sets]
    g = GroupVerdict(group.functional_id, group.control, sets)
    g.reasons = [f.code for f in group.errors]
    if g.reasons:
        # No set of a rejected group is acted on, so none is acknowledged as accepted.
        for s in sets:
            if s.status != "R":
                s.status = "R"
        g.status = "R"
        return g
    accepted = sum(1 for s in sets if s.accepted)
    if sets and accepted == 0:
        g.status = "R"
    elif accepted < len(sets):
        g.status = "P"
    elif any(s.status == "E" for s in sets):
        g.status = "E"
    return g


def build_997(groups: Sequence[GroupVerdict]) -> list[list[str]]:
    """The body of one 997 answering ``groups`` (in one interchange, one group each)."""
    body: list[list[str]] = []
    for g in groups:
        body.append(["AK1", g.functional_id, g.control])
        for s in g.sets:
            body.append(["AK2", s.code, s.control])
            for f in s.findings:
                body.append(["AK3", f.tag, str(f.position), f.loop or "", f.code])
                for e in f.elements:
                    body.append(["AK4", str(e.position), e.ref if e.ref.isdigit() else "",
                                 e.code, _copy(e.value)])
            body.append(["AK5", s.status, *s.reasons[:5]])
        accepted = sum(1 for s in g.sets if s.accepted)
        body.append(["AK9", g.status, str(len(g.sets)), str(len(g.sets)), str(accepted),
                     *g.reasons[:5]])
    return body


def _copy(value: str | None) -> str:
    if not value or any(ord(c) < 32 for c in value):
        return ""
    return value[:AK404_CHARS]


def ta1(ic: Interchange, code: str, note: str) -> list[str]:
    """A TA1 segment answering interchange ``ic``: A, E or R and the note code (I18)."""
    control = ic.control if ic.control.isdigit() and len(ic.control) == 9 else "000000000"
    date = ic.date if len(ic.date) == 6 and ic.date.isdigit() else "000000"
    tm = ic.time if len(ic.time) == 4 and ic.time.isdigit() else "0000"
    return ["TA1", control, date, tm, code, note]


# --------------------------------------------------------------------------- reading 997s


@dataclass(frozen=True, slots=True)
class AckedSet:
    """What a received 997 says about one of our sets (or a whole group: ``control`` None)."""

    group_control: str
    functional_id: str
    control: str | None
    status: str
    note: str


def read_997(ts: TransactionSet) -> list[AckedSet]:
    """Every verdict a 997 gives: per AK2/AK5, or the AK9 verdict for a group without AK2."""
    out: list[AckedSet] = []
    notes: list[str] = []
    group, fid, ak2, had_ak2 = "", "", None, False
    for seg in ts.body:
        if seg.tag == "AK1":
            fid, group, had_ak2 = seg.get(1), seg.get(2), False
        elif seg.tag == "AK2":
            ak2, notes, had_ak2 = seg.get(2), [], True
        elif seg.tag == "AK3":
            notes.append(f"{seg.get(1)} at segment {seg.get(2)}: code {seg.get(4)}")
        elif seg.tag == "AK4":
            notes.append(f"element {seg.get(1)} code {seg.get(3)}"
                         + (f" ({seg.get(4)!r})" if seg.get(4) else ""))
        elif seg.tag == "AK5" and ak2 is not None:
            reasons = [seg.get(i) for i in range(2, 7) if seg.get(i)]
            note = "; ".join(notes + ([f"AK5 codes {','.join(reasons)}"] if reasons else []))
            out.append(AckedSet(group, fid, ak2, seg.get(1), note))
            ak2 = None
        elif seg.tag == "AK9" and not had_ak2:
            reasons = [seg.get(i) for i in range(5, 10) if seg.get(i)]
            out.append(AckedSet(group, fid, None, seg.get(1),
                                f"AK9 codes {','.join(reasons)}" if reasons else ""))
    return out

