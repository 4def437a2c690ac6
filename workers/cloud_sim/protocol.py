"""OData protocol pieces of the simulator: errors, body validation, query parameters.

Pure functions over requests and stored rows; the routing and the store
transactions live in ``app``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import ValidationError

from coexistence.cloud.models import RESOURCE_MODELS, CloudResource
from workers.cloud_sim.http import Response
from workers.cloud_sim.store import Row

#: JSON names the server owns; ignored in request bodies.
_SERVER_FIELDS = ("@odata.etag", "id", "lastModifiedDateTime", "lastModifiedBy")


class ApiError(Exception):
    """An answer other than success, in the OData error shape."""

    def __init__(self, status: int, code: str, message: str,
                 targets: list[str] | list[tuple[str, str]] | None = None,
                 headers: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        #: (field path, message) pairs; a bare path reuses the main message.
        self.targets = [t if isinstance(t, tuple) else (t, message) for t in targets or []]
        self.headers = headers or []

    def body(self) -> dict:
        error: dict = {"code": self.code, "message": self.message}
        if self.targets:
            error["details"] = [{"target": t, "message": m} for t, m in self.targets]
        return {"error": error}


def resource_model(entity_set: str) -> type[CloudResource]:
    try:
        return RESOURCE_MODELS[entity_set]
    except KeyError:
        raise ApiError(404, "NotFound", f"no entity set {entity_set!r}") from None


def parse_json(raw: bytes):
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, "MalformedJson", f"request body is not valid JSON: {exc}") from None


def validate(model: type[CloudResource], body) -> dict:
    """The stored form of a body: validated, server fields dropped, JSON names."""
    return _stored_dict(_validated(model, body))


def validate_stored(model: type[CloudResource], body) -> tuple[str, str, int | None]:
    """``validate``'s stored form as the JSON text the store keeps, with the record's
    number and ``coexistSourceVersion``: serialised once by pydantic-core instead of a
    dict dump then ``json.dumps`` (the create path of a backfill's ``$batch``)."""
    record = _validated(model, body)
    if "quantity_on_hand" in type(record).model_fields:
        # A derived field to compute: through the dict.
        data = _stored_dict(record)
        return (json.dumps(data, separators=(",", ":")), data["number"],
                data.get("coexistSourceVersion"))
    return (record.model_dump_json(by_alias=True, exclude=EXCLUDE), record.number,
            record.coexist_source_version)


def _validated(model: type[CloudResource], body) -> CloudResource:
    if not isinstance(body, dict):
        raise ApiError(400, "BadRequest", "body must be a JSON object")
    doc = {k: v for k, v in body.items() if k not in _SERVER_FIELDS}
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        errors = exc.errors()
        targets = [("/".join(str(p) for p in e["loc"]) or "<root>", e["msg"]) for e in errors]
        path, message = targets[0]
        more = f" (and {len(targets) - 1} more)" if len(targets) > 1 else ""
        raise ApiError(422, "ValidationFailed", f"{path}: {message}{more}", targets) from None


def _stored_dict(record: CloudResource) -> dict:
    data = record.model_dump(mode="json", by_alias=True, exclude=EXCLUDE)
    if "quantityOnHand" in data:
        # Derived by the server, never taken from the client.
        on_hand = Decimal(data["quantityOnHand"]) - Decimal(data["quantityAllocated"])
        data["availableToPromise"] = str(max(on_hand, Decimal(0)))
    return data


EXCLUDE = {"odata_etag", "id", "last_modified_date_time", "last_modified_by"}


MINIMAL_APPLIED = ("Preference-Applied", "return=minimal")


def minimal(headers: dict) -> bool:
    """``Prefer: return=minimal``: answer a write 204 with its ETag, no document."""
    return "return=minimal" in headers.get("prefer", "")


def selected_fields(query: dict) -> frozenset[str] | None:
    raw = query.get("$select")
    return frozenset(f.strip() for f in raw.split(",") if f.strip()) if raw else None


def check_if_match(row: Row, headers: dict) -> None:
    wanted = headers.get("if-match")
    if wanted and wanted != "*" and wanted != row.etag:
        raise ApiError(412, "PreconditionFailed",
                       f"If-Match {wanted} does not match the current ETag {row.etag}",
                       headers=[("ETag", row.etag)])


def int_param(query: dict, name: str, default: int, maximum: int | None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "BadRequest", f"{name}={raw!r} is not an integer", [name]) from None
    if value < 0 or (maximum is not None and value > maximum):
        raise ApiError(400, "BadRequest", f"{name}={value} out of range", [name])
    return value


def iso_param(value: str) -> str:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, "BadRequest", f"{value!r} is not an ISO 8601 timestamp") from None
    if moment.tzinfo is None:
        raise ApiError(400, "BadRequest", f"{value!r} has no time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def batch_size(raw: bytes) -> int:
    # Cheap count for rate limiting; the real parse and its errors come later.
    return raw.count(b'"method"')


def json_response(status: int, doc, headers: list[tuple[str, str]] | None = None) -> Response:
    body = b"" if doc is None else json.dumps(doc, separators=(",", ":")).encode()
    return Response(status, body, list(headers or []))
