"""Trading-partner profiles: the ``[edi]`` section of coexist's configuration.

``EdiSettings`` is a self-contained section model (the composition root's
typed configuration includes it as one field); ``EdiSettings.from_toml``
reads it from TOML text, either a whole configuration file (the ``[edi]``
table) or the section on its own::

    [[edi.partners]]
    id = "ACME"
    partner_isa = { qualifier = "ZZ", id = "ACMEBUY" }
    our_isa = { qualifier = "ZZ", id = "DISTCO" }
    partner_gs = "ACMEBUY"
    our_gs = "DISTCO"
    usage = "production"            # ISA15 P; "test" writes T
    receives = ["855", "856", "810"]
    sends = ["850"]
    expects_997 = true              # we answer its 850s with 997s
    sends_997 = true                # it answers ours: tracked by `coexist edi status`
    ack_window_minutes = 120
    asn_structure = "SOPI"          # or "SOI"
    hold_810_for_856_minutes = 60   # an 810 waits this long for its order's 856
    hold_for_855_minutes = 60       # an 856 (or 810) waits this long for its order's 855
    customers = ["10042"]
    folder = "/srv/edi/acme"        # inbound/ outbound/ processed/ failed/

or, on the partner's SFTP server (``transport = "sftp"``, the extra ``coexist[sftp]``)::

    transport = "sftp"
    sftp = { host = "sftp.acme.example", port = 22, user = "distco",
             key_path = "/etc/coexist/acme_ed25519",      # or password_env = "ACME_SFTP_PW"
             known_hosts = "/etc/coexist/known_hosts",
             inbound = "out/850", outbound = "in", processed = "out/done",
             failed = "out/failed" }

Every error names the partner and the field (``EdiConfigError``).
"""

from __future__ import annotations

import contextlib
import tomllib
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bus.errors import BusinessError
from coexistence.edi.x12 import Party, Separators

Key = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")]
OUTBOUND_DOCUMENTS: tuple[Literal["855", "856", "810"], ...] = ("855", "856", "810")
INBOUND_DOCUMENTS = ("850",)
#: The order documents in the order a partner must receive them: its order confirmed (855)
#: before it is shipped (856), shipped before it is billed (810).
DOCUMENT_ORDER = ("855", "856", "810")


class EdiConfigError(BusinessError):
    """A partner profile that cannot be used; the message names partner and field."""


class IsaId(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    qualifier: Annotated[str, Field(min_length=2, max_length=2, pattern=r"^[0-9A-Z]{2}$")]
    id: Annotated[str, Field(min_length=1, max_length=15, pattern=r"^[!-~][ -~]*$")]

    def party(self) -> Party:
        return Party(self.qualifier, self.id)


class SftpSettings(BaseModel):
    """Where a partner's four folders are on its SFTP server, and how coexist logs in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: Annotated[str, Field(min_length=1)]
    port: Annotated[int, Field(gt=0, lt=65536)] = 22
    user: Annotated[str, Field(min_length=1)]
    #: A private key file (the usual way); or ``password_env``.
    key_path: str | None = None
    #: The name of the environment variable holding the password (never the password).
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    #: known_hosts file the server's host key must be in (unset: ~/.ssh/known_hosts).
    known_hosts: str | None = None
    #: Remote folders (relative to the login folder, or absolute).
    inbound: Annotated[str, Field(min_length=1)] = "inbound"
    outbound: Annotated[str, Field(min_length=1)] = "outbound"
    processed: Annotated[str, Field(min_length=1)] = "processed"
    failed: Annotated[str, Field(min_length=1)] = "failed"
    #: Seconds to connect, and a quarter of what one SFTP step may take.
    timeout_s: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _login(self) -> SftpSettings:
        if not self.key_path and not self.password_env:
            raise ValueError("give key_path (a private key file) or password_env (the "
                             "variable holding the password)")
        if len({self.inbound, self.outbound, self.processed, self.failed}) < 4:
            raise ValueError("inbound, outbound, processed and failed must be four "
                             "different remote folders")
        return self


class PartnerProfile(BaseModel):
    """One trading partner: identities, separators, documents, acknowledgments, customers."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: coexist's name for the partner (folder names, records, the CLI).
    id: Key
    name: Annotated[str, Field(max_length=60)] = ""
    #: The partner's interchange identity (ISA05/06 on what it sends).
    partner_isa: IsaId
    #: Ours towards this partner (ISA05/06 on what we send).
    our_isa: IsaId
    partner_gs: Annotated[str, Field(min_length=2, max_length=15)]
    our_gs: Annotated[str, Field(min_length=2, max_length=15)]
    element_separator: Annotated[str, Field(min_length=1, max_length=1)] = "*"
    component_separator: Annotated[str, Field(min_length=1, max_length=1)] = ">"
    segment_terminator: Annotated[str, Field(min_length=1, max_length=1)] = "~"
    #: Written after each segment terminator (``"\n"`` for people who read files).
    segment_suffix: Literal["", "\n", "\r\n"] = "\n"
    usage: Literal["test", "production"] = "test"
    #: Documents the partner sends us.
    sends: tuple[Literal["850"], ...] = ("850",)
    #: Documents we send the partner.
    receives: tuple[Literal["855", "856", "810"], ...] = OUTBOUND_DOCUMENTS
    #: We answer every interchange it sends with a 997 (or a TA1).
    expects_997: bool = True
    #: It answers what we send with 997s; each outbound set then waits for its 997.
    sends_997: bool = True
    #: An outbound set without its 997 after this long is reported by ``coexist edi status``.
    ack_window_minutes: Annotated[int, Field(gt=0)] = 24 * 60
    #: A second interchange with the same sender and ISA13 within this window is a duplicate.
    duplicate_window_days: Annotated[int, Field(gt=0)] = 365
    asn_structure: Literal["SOI", "SOPI"] = "SOI"
    #: An 810 for an order none of whose 856s was sent yet waits (held in ``edi_held``)
    #: this long after its invoice event, so the partner never gets a bill before the
    #: shipment it bills; after that it is sent anyway (an invoice for an order that does
    #: not ship).  0: never wait.  Only when the partner receives 856s.
    hold_810_for_856_minutes: Annotated[int, Field(ge=0)] = 60
    #: An 856 (and an 810) of an order that came by 850 waits this long after its event
    #: for the order's 855, so the partner never gets a shipment (or a bill) for an order
    #: it has not seen confirmed; after that it goes anyway.  0: never wait.  Only when
    #: the partner receives 855s.
    hold_for_855_minutes: Annotated[int, Field(ge=0)] = 60
    #: Customer keys this partner may see (and orders for), never another partner's.
    customers: tuple[Key, ...] = Field(min_length=1)
    #: N1*BY identification code (N104) -> customer key, when the partner has several.
    buyer_ids: dict[str, Key] = Field(default_factory=dict)
    #: N1*ST identification code (N104) -> the customer's ship-to site id.
    ship_to: dict[str, Key] = Field(default_factory=dict)
    #: Currency of an 850 without CUR.
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    #: ``folder``: a file-drop root; ``sftp``: the folders on the partner's SFTP server.
    transport: Literal["folder", "sftp"] = "folder"
    #: File-drop root holding inbound/, outbound/, processed/, failed/ (transport folder).
    folder: str = Field(default="", validate_default=True)
    #: The SFTP server and remote folders (transport sftp).
    sftp: SftpSettings | None = None
    #: A file is taken only when unchanged for this long (0: rely on the final rename).
    settle_seconds: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("folder")
    @classmethod
    def _folder(cls, v: str, info: ValidationInfo) -> str:
        if not v and info.data.get("transport", "folder") == "folder":
            raise ValueError("Field required (the file-drop root, unless transport = "
                             "\"sftp\")")
        return v

    @field_validator("element_separator", "component_separator", "segment_terminator")
    @classmethod
    def _separator(cls, v: str) -> str:
        if v.isalnum() or v == " ":
            raise ValueError(f"separator {v!r} must not be a letter, digit or space")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PartnerProfile:
        seps = {self.element_separator, self.component_separator, self.segment_terminator}
        if len(seps) < 3:
            raise ValueError("element_separator, component_separator and segment_terminator "
                             "must be three different characters")
        if self.segment_terminator in ("\n", "\r") and self.segment_suffix:
            raise ValueError("segment_suffix must be empty when the segment terminator is a "
                             "line break")
        if self.transport == "sftp" and self.sftp is None:
            raise ValueError("transport = \"sftp\" needs an sftp table (host, user, key_path "
                             "or password_env, remote folders)")
        for code, customer in self.buyer_ids.items():
            if customer not in self.customers:
                raise ValueError(f"buyer_ids[{code!r}] = {customer!r} is not one of this "
                                 f"partner's customers {list(self.customers)}")
        for name, value in (("our_gs", self.our_gs), ("partner_gs", self.partner_gs),
                            ("partner_isa.id", self.partner_isa.id),
                            ("our_isa.id", self.our_isa.id)):
            for s in seps:
                if s in value:
                    raise ValueError(f"{name} {value!r} contains the separator {s!r}")
        return self

    def must_follow(self, doc: str) -> tuple[tuple[str, int], ...]:
        """The documents of the same order ``doc`` must follow for this partner, each with
        its hold in minutes (how long after ``doc``'s event it waits for that one), the
        nearest first: an 810 follows the 856 and the 855, an 856 the 855, an 855 nothing.
        A document the partner does not receive, or whose hold is 0, is not waited for."""
        holds = {"855": self.hold_for_855_minutes, "856": self.hold_810_for_856_minutes}
        earlier = DOCUMENT_ORDER[:DOCUMENT_ORDER.index(doc)] if doc in DOCUMENT_ORDER else ()
        return tuple((d, holds[d]) for d in reversed(earlier)
                     if d in self.receives and holds[d] > 0)

    @property
    def separators(self) -> Separators:
        return Separators(self.element_separator, self.component_separator,
                          self.segment_terminator)

    @property
    def isa15(self) -> str:
        return "P" if self.usage == "production" else "T"


class EdiSettings(BaseModel):
    """The ``[edi]`` section: every trading partner."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    partners: tuple[PartnerProfile, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> EdiSettings:
        _unique_by(self.partners, "id", lambda p: p.id)
        _unique_by(self.partners, "partner_isa",
                   lambda p: (p.partner_isa.qualifier, p.partner_isa.id))
        _unique_by([p for p in self.partners if p.transport == "folder"], "folder",
                   lambda p: p.folder)
        owner: dict[str, str] = {}
        for p in self.partners:
            for c in p.customers:
                if c in owner:
                    raise ValueError(f"partner {p.id}: customers: customer {c} already belongs "
                                     f"to partner {owner[c]} (a customer's documents go to one "
                                     "partner)")
                owner[c] = p.id
        return self

    def partner(self, partner_id: str) -> PartnerProfile | None:
        return next((p for p in self.partners if p.id == partner_id), None)

    def by_sender(self, qualifier: str, isa_id: str) -> PartnerProfile | None:
        return next((p for p in self.partners
                     if p.partner_isa.qualifier == qualifier and p.partner_isa.id == isa_id),
                    None)

    def owner_of(self, customer_key: str) -> PartnerProfile | None:
        """The partner whose customer this is (``None``: no partner sees it)."""
        return next((p for p in self.partners if customer_key in p.customers), None)

    @classmethod
    def from_data(cls, data: Any) -> EdiSettings:
        """Validate a parsed section; every error names the partner and the field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise EdiConfigError(_describe(exc, data)) from None

    @classmethod
    def from_toml(cls, text: str, *, source: str = "<toml>") -> EdiSettings:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise EdiConfigError(f"{source}: not valid TOML: {exc}") from None
        section = data.get("edi", data) if isinstance(data, dict) else data
        try:
            return cls.from_data(section)
        except EdiConfigError as exc:
            raise EdiConfigError(f"{source}: {exc}") from None


def _unique_by(partners, field: str, key) -> None:
    seen: dict[Any, str] = {}
    for p in partners:
        k = key(p)
        if k in seen:
            raise ValueError(f"partner {p.id}: {field}: {k!r} is already used by partner "
                             f"{seen[k]}")
        seen[k] = p.id


def _describe(exc: ValidationError, data: Any) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = list(err["loc"])
        where = "edi"
        if len(loc) >= 2 and loc[0] == "partners" and isinstance(loc[1], int):
            pid = "?"
            with contextlib.suppress(KeyError, IndexError, TypeError, AttributeError):
                pid = data["partners"][loc[1]].get("id", f"#{loc[1] + 1}")
            where = f"edi partner {pid}"
            loc = loc[2:]
        fieldname = ".".join(str(p) for p in loc) or "<profile>"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(value, dict) else f" = {value!r}"
        parts.append(f"{where}: field {fieldname}{shown}: {msg}")
    return "; ".join(parts)
