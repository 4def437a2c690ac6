"""REST protocol pieces of the CRM simulator: error answers, JSON responses, headers,
query parameters.  Pure functions; routing and transactions live in ``app``."""

from __future__ import annotations

import hashlib
import json
import re

from workers.cloud_sim.http import Response
from workers.crm_sim.schema import record_id

NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]


class SfError(Exception):
    """A whole-request error in the REST shape (a JSON array of entries)."""

    def __init__(self, status: int, entries: list | dict, headers=None):
        super().__init__(str(entries))
        self.status, self.entries, self.headers = status, entries, list(headers or [])

    @classmethod
    def one(cls, status: int, code: str, message: str, fields=None) -> SfError:
        entry = {"message": message, "errorCode": code}
        if fields is not None:
            entry["fields"] = fields
        return cls(status, [entry])


#: One encoder for every answer (``json.dumps`` with ``separators`` builds one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def json_response(status: int, doc, headers=None) -> Response:
    body = b"" if doc is None else _ENCODER.encode(doc).encode()
    return Response(status, body, list(headers or []))


def user_id(name: str) -> str:
    """A stable User id (005...) for a user name."""
    return record_id("005", int.from_bytes(hashlib.sha1(name.encode()).digest()[:6], "big"))


def call_options_client(header: str) -> str:
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip() == "client":
            return value.strip()
    return ""


def allow_save(headers: dict) -> bool:
    raw = headers.get("sforce-duplicate-rule-header", "")
    return any(p.strip().lower() == "allowsave=true" for p in re.split(r"[;,]", raw))


def int_param(query: dict, name: str, default: int, low: int, high: int | None) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SfError.one(400, "INVALID_QUERY_PARAMETER", f"{name}={raw!r} is not a number"
                          ) from None
    if value < low or (high is not None and value > high):
        raise SfError.one(400, "INVALID_QUERY_PARAMETER",
                          f"{name}={value} outside {low}..{high if high is not None else ''}")
    return value
