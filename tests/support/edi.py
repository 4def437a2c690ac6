"""Test helpers for the EDI channel: profiles, and reading back what coexist wrote.

The read-back functions map 855/856/810 sets to plain dicts of the elements
coexist maps, independently of the builders, so a round trip compares the
canonical record with what a partner would read.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from decimal import Decimal
from typing import Any

from coexistence.edi import x12
from coexistence.edi.profiles import PartnerProfile


def profile(folder: str = "/nonexistent/edi", **overrides: Any) -> PartnerProfile:
    data: dict[str, Any] = {
        "id": "ACME",
        "partner_isa": {"qualifier": "ZZ", "id": "ACMEBUY"},
        "our_isa": {"qualifier": "ZZ", "id": "DISTCO"},
        "partner_gs": "ACMEBUY",
        "our_gs": "DISTCO",
        "customers": ["10000"],
        "folder": folder,
    }
    data.update(overrides)
    return PartnerProfile.model_validate(data)


def partner_toml(folder: Any, customers: Iterable[str] = ("10000",), **extra: Any) -> str:
    """The ``[[edi.partners]]`` block of the partner ``profile()`` makes (ACME, its ISA/GS ids)
    as a config file holds it, dropping into ``folder``; ``extra``: more keys (strings,
    numbers, lists of strings)."""
    keys: dict[str, Any] = {"customers": list(customers), **extra, "folder": str(folder)}
    return ('[[edi.partners]]\nid = "ACME"\n'
            'partner_isa = { qualifier = "ZZ", id = "ACMEBUY" }\n'
            'our_isa = { qualifier = "ZZ", id = "DISTCO" }\n'
            'partner_gs = "ACMEBUY"\nour_gs = "DISTCO"\n'
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items()))


def _d(value: str) -> date:
    return date(int(value[:4]), int(value[4:6]), int(value[6:8]))


def only_set(text: str) -> x12.TransactionSet:
    [ic] = x12.read(text, file="t")
    assert ic.errors == [], ic.errors
    [group] = ic.groups
    assert group.errors == []
    [ts] = group.sets
    assert ts.errors == []
    return ts


def read_855(ts: x12.TransactionSet) -> dict[str, Any]:
    out: dict[str, Any] = {"lines": []}
    for seg in ts.body:
        if seg.tag == "BAK":
            out.update(ack_type=seg.get(2), po=seg.get(3), ordered_on=_d(seg.get(4)),
                       order_key=seg.get(8), acknowledged_on=_d(seg.get(9)))
        elif seg.tag == "CUR":
            out["currency"] = seg.get(2)
        elif seg.tag == "PO1":
            out["lines"].append({"line_no": int(seg.get(1)), "quantity": Decimal(seg.get(2)),
                                 "unit": seg.get(3), "unit_price": Decimal(seg.get(4)),
                                 "sku": seg.get(7)})
        elif seg.tag == "ACK":
            out["lines"][-1].update(status=seg.get(1), answered=Decimal(seg.get(2)))
        elif seg.tag == "CTT":
            out["ctt"] = (int(seg.get(1)), Decimal(seg.get(2)))
    return out


def read_856(ts: x12.TransactionSet) -> dict[str, Any]:
    out: dict[str, Any] = {"levels": [], "lines": [], "refs": {}}
    for seg in ts.body:
        if seg.tag == "BSN":
            out.update(key=seg.get(2), shipped_on=_d(seg.get(3)), shipped_hhmm=seg.get(4),
                       structure=seg.get(5))
        elif seg.tag == "HL":
            out["levels"].append((seg.get(1), seg.get(2), seg.get(3), seg.get(4)))
        elif seg.tag == "TD5":
            out["carrier"] = seg.get(3) or seg.get(5)
        elif seg.tag == "REF":
            out["refs"][seg.get(1)] = seg.get(2)
        elif seg.tag == "PRF":
            out.update(po=seg.get(1), ordered_on=_d(seg.get(4)))
        elif seg.tag == "MAN":
            out["man"] = seg.get(2)
        elif seg.tag == "LIN":
            out["lines"].append({"order_line_no": int(seg.get(1)), "sku": seg.get(3)})
        elif seg.tag == "SN1":
            out["lines"][-1].update(quantity=int(seg.get(2)), unit=seg.get(3))
        elif seg.tag == "CTT":
            out["ctt"] = int(seg.get(1))
    return out


def read_810(ts: x12.TransactionSet) -> dict[str, Any]:
    out: dict[str, Any] = {"lines": []}
    for seg in ts.body:
        if seg.tag == "BIG":
            out.update(issued_on=_d(seg.get(1)), key=seg.get(2), po=seg.get(4))
        elif seg.tag == "CUR":
            out["currency"] = seg.get(2)
        elif seg.tag == "REF" and seg.get(1) == "VN":
            out["order_key"] = seg.get(2)
        elif seg.tag == "ITD":
            out.update(due_on=_d(seg.get(6)), net_days=int(seg.get(7)))
        elif seg.tag == "IT1":
            out["lines"].append({"line_no": int(seg.get(1)), "quantity": int(seg.get(2)),
                                 "unit": seg.get(3), "unit_price": Decimal(seg.get(4)),
                                 "sku": seg.get(7), "description": ""})
        elif seg.tag == "PID":
            out["lines"][-1]["description"] += seg.get(5)
        elif seg.tag == "TDS":
            out["total"] = Decimal(int(seg.get(1))) / 100
        elif seg.tag == "TXI":
            out["tax"] = Decimal(seg.get(2))
        elif seg.tag == "CTT":
            out["ctt"] = int(seg.get(1))
    return out
