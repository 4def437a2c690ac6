"""Faults the simulator injects, set at start (``--faults``) or via ``/admin/faults``.

Rates are probabilities per request (seeded, so a run can be repeated); the
``next`` queue holds one-shot faults for the next matching requests, which is
what tests use to hit one exact case.  Kinds:

* ``error``       503 before handling: nothing was written.
* ``error_after`` handled and committed, then answered 500.
* ``timeout``     handled and committed, then no answer at all.
* ``drop``        handled and committed, then the connection is cut mid-response.
* ``429``         answered 429 with Retry-After before handling.

The "after" kinds are the dangerous ones for a client: the write happened and
the client cannot know; only idempotency keys keep a retry from applying twice.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field, fields

KINDS = ("error", "error_after", "timeout", "drop", "429")
SCOPES = ("write", "read", "any")


class FaultSpecError(ValueError):
    """A fault specification that cannot be understood (names the field and value)."""


@dataclass
class Faults:
    #: Probability of a 503 before handling.
    error_rate: float = 0.0
    #: Probability of a 500 after the request was committed.
    error_after_rate: float = 0.0
    #: Probability of handling then never answering.
    timeout_rate: float = 0.0
    #: Probability of handling then cutting the connection mid-response.
    drop_rate: float = 0.0
    #: Added latency per request, in milliseconds.
    latency_ms: float = 0.0
    #: The next N requests are answered 429 (a burst), then counting stops.
    burst_429: int = 0
    #: Retry-After (whole seconds) on injected 429s and 503s.
    retry_after_s: int = 1
    #: How long a timeout fault holds the connection before closing it, in seconds.
    hang_s: float = 30.0
    #: Which requests the rates apply to: ``write``, ``read`` or ``any``.
    scope: str = "any"
    #: One-shot faults: ``"drop"`` or ``"drop:write"`` / ``"429:any"`` (default scope write).
    next: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self.validate()

    def validate(self) -> None:
        for name in ("error_rate", "error_after_rate", "timeout_rate", "drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise FaultSpecError(f"{name}={value!r}: must be a probability in [0, 1]")
        for name in ("latency_ms", "burst_429", "retry_after_s", "hang_s"):
            if getattr(self, name) < 0:
                raise FaultSpecError(f"{name}={getattr(self, name)!r}: must not be negative")
        if self.scope not in SCOPES:
            raise FaultSpecError(f"scope={self.scope!r}: must be one of {', '.join(SCOPES)}")
        for item in self.next:
            kind, _, scope = item.partition(":")
            if kind not in KINDS or (scope and scope not in SCOPES):
                raise FaultSpecError(
                    f"next={item!r}: must be KIND[:SCOPE] with KIND in {', '.join(KINDS)}"
                    f" and SCOPE in {', '.join(SCOPES)}"
                )

    def as_dict(self) -> dict:
        return asdict(self)

    def draw(self, is_write: bool) -> str | None:
        """The fault for one request, or ``None``; consumes one-shot faults."""
        for i, item in enumerate(self.next):
            kind, _, scope = item.partition(":")
            if _matches(scope or "write", is_write):
                del self.next[i]
                return kind
        if self.burst_429 > 0:
            self.burst_429 -= 1
            return "429"
        if not _matches(self.scope, is_write):
            return None
        roll = self._rng.random()
        for kind, rate in (
            ("error", self.error_rate),
            ("error_after", self.error_after_rate),
            ("timeout", self.timeout_rate),
            ("drop", self.drop_rate),
        ):
            if roll < rate:
                return kind
            roll -= rate
        return None


def _matches(scope: str, is_write: bool) -> bool:
    return scope == "any" or (scope == "write") == is_write


def parse_faults(spec: str | dict | None) -> Faults:
    """Faults from a dict, a JSON object or ``key=value,key=value`` text.

    ``next`` in the text form takes ``+``-separated kinds: ``next=drop+timeout``.
    """
    if spec is None or spec == "":
        return Faults()
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise FaultSpecError(f"faults: not valid JSON: {exc}") from None
        else:
            spec = _parse_pairs(text)
    if not isinstance(spec, dict):
        raise FaultSpecError("faults: expected an object of fault settings")
    known = {f.name: f for f in fields(Faults)}
    values = {}
    for name, value in spec.items():
        if name not in known:
            raise FaultSpecError(f"faults: unknown setting {name!r} (known: {', '.join(known)})")
        values[name] = _coerce(name, known[name].type, value)
    return Faults(**values)


def _parse_pairs(text: str) -> dict:
    out: dict = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = pair.partition("=")
        if not sep:
            raise FaultSpecError(f"faults: {pair!r} is not key=value")
        out[name.strip()] = value.strip()
    return out


def _coerce(name: str, annotation: str, value):
    try:
        if name == "next":
            if isinstance(value, str):
                return [v for v in value.split("+") if v]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
            raise ValueError("expected a list of kinds")
        if name == "scope":
            return str(value)
        if "None" in annotation and value in (None, "", "none"):
            return None
        if "int" in annotation:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected a whole number")
            return int(value)
        return float(value)
    except (TypeError, ValueError) as exc:
        raise FaultSpecError(f"faults: {name}={value!r}: {exc}") from None
