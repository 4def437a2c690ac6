"""Faults the CRM simulator injects, set at start (``--faults``) or via ``/admin/faults``.

Request faults (before handling unless said otherwise; rates are seeded probabilities):

* ``error_rate`` / ``next: ["503"]``: 503 ``SERVER_UNAVAILABLE``, nothing written;
* ``next: ["401"]``: 401 ``INVALID_SESSION_ID`` as for an expired token;
* ``drop_rate`` / ``next: ["drop"]``: handled and committed, then the connection is cut
  mid-response (the client cannot know whether its write applied);
* ``next: ["timeout"]``: handled and committed, then no answer (held ``hang_s``);
* ``latency_ms``: added to every API request;
* ``limit_exceeded_s``: for that many seconds from when it is set, every API request is
  refused 403 ``REQUEST_LIMIT_EXCEEDED`` (the org's budget spent by someone else).

Record faults (per external-id value or record id, in single and collection writes):

* ``lock``: ``{value: n}`` -> the next ``n`` saves of that record fail
  ``UNABLE_TO_LOCK_ROW`` (``-1``: every save);
* ``validation``: ``{value: message}`` -> saves fail ``FIELD_CUSTOM_VALIDATION_EXCEPTION``
  with that message (a validation rule an admin activated);
* ``required``: ``{object: [field, ...]}`` -> those fields became required
  (``REQUIRED_FIELD_MISSING`` when a save leaves them empty).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields

REQUEST_KINDS = ("503", "401", "drop", "timeout")


class FaultSpecError(ValueError):
    """A fault specification that cannot be understood (names the setting and value)."""


@dataclass
class Faults:
    #: Probability of a 503 before handling.
    error_rate: float = 0.0
    #: Probability of handling, committing, then cutting the connection.
    drop_rate: float = 0.0
    #: Added latency per API request, in milliseconds.
    latency_ms: float = 0.0
    #: How long a timeout fault holds the connection before closing it, in seconds.
    hang_s: float = 30.0
    #: Seconds (from when set) during which every API request is over the limit.
    limit_exceeded_s: float = 0.0
    #: One-shot request faults, consumed in order: 503, 401, drop, timeout.
    next: list[str] = field(default_factory=list)
    lock: dict[str, int] = field(default_factory=dict)
    validation: dict[str, str] = field(default_factory=dict)
    required: dict[str, list[str]] = field(default_factory=dict)
    seed: int | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.validate()

    def validate(self) -> None:
        for name in ("error_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FaultSpecError(f"{name}={value!r}: must be a probability in [0, 1]")
        for name in ("latency_ms", "hang_s", "limit_exceeded_s"):
            if getattr(self, name) < 0:
                raise FaultSpecError(f"{name}={getattr(self, name)!r}: must not be negative")
        for kind in self.next:
            if kind not in REQUEST_KINDS:
                raise FaultSpecError(f"next={kind!r}: must be one of {', '.join(REQUEST_KINDS)}")
        for key, count in self.lock.items():
            if not isinstance(count, int) or count < -1:
                raise FaultSpecError(f"lock[{key!r}]={count!r}: a count >= 0, or -1 for always")
        for obj, names in self.required.items():
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise FaultSpecError(f"required[{obj!r}]: expected a list of field names")

    def as_dict(self) -> dict:
        return asdict(self)

    def draw(self) -> str | None:
        """The request fault for one API request, or ``None``; consumes one-shot faults."""
        if self.next:
            return self.next.pop(0)
        roll = self._rng.random()
        if roll < self.error_rate:
            return "503"
        if roll < self.error_rate + self.drop_rate:
            return "drop"
        return None

    def record_fault(self, keys: tuple[str, ...]) -> tuple[str, str] | None:
        """(status code, message) for a save of the record known by ``keys``, or ``None``."""
        for key in keys:
            if key in self.lock:
                left = self.lock[key]
                if left == 0:
                    continue
                if left > 0:
                    self.lock[key] = left - 1
                return ("UNABLE_TO_LOCK_ROW",
                        f"unable to obtain exclusive access to this record or 1 records: {key}")
            if key in self.validation:
                return "FIELD_CUSTOM_VALIDATION_EXCEPTION", self.validation[key]
        return None


def parse_faults(spec: str | dict | None) -> Faults:
    """Faults from a dict or a JSON object."""
    if spec is None or spec == "":
        return Faults()
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise FaultSpecError(f"faults: not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise FaultSpecError("faults: expected an object of fault settings")
    known = {f.name for f in fields(Faults)}
    unknown = set(spec) - known
    if unknown:
        raise FaultSpecError(f"faults: unknown setting(s) {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(sorted(known))})")
    try:
        return Faults(**spec)
    except TypeError as exc:
        raise FaultSpecError(f"faults: {exc}") from None
