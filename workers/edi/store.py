"""EDI state tables: interchanges in and out, documents, control-number counters, events.

* ``edi_interchange``: one row per interchange received or sent, with its
  bytes.  An outbound row is recorded ``allocated`` in the transaction that
  allocates its control numbers, and marked ``written`` once its file has its
  final name; a row left ``allocated`` by a crash is written by the next
  ``flush_pending`` with the same bytes (so the partner never sees a gap and
  a number is never used twice), and one left ``staged`` whose stage file is gone was
  renamed already and is never written again (the partner may have taken it).
  Inbound rows are unique per (partner, sender, ISA13, content digest), so a re-read of
  the same file after a crash finds its own row.
* ``edi_document``: one row per transaction set in or out, with the business
  object it belongs to (domain, key, order key), its correlation id, its
  group and set control numbers and, for outbound sets, its acknowledgment
  state.  Outbound business documents are unique per (partner, type,
  business key): a redelivered event never sends a second 855/856/810.
* ``edi_counter``: the last control number per (partner, kind) for ISA13,
  GS06 and ST02, and the EDI order-key sequence.
* ``edi_event``: operator actions (resend) with actor and reason.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field

from workers.db import StateTable

_ID = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class EdiInterchange(StateTable, table=True):
    __tablename__ = "edi_interchange"
    __table_args__ = (
        # One first-seen inbound interchange per (partner, sender, ISA13) at a time: two
        # workers reading two copies of one interchange cannot both act on it.
        UniqueConstraint("partner", "direction", "dedupe_key", name="uq_edi_interchange_dedupe"),
        Index("ix_edi_interchange_status", "direction", "status"),
        # Inbound: our own earlier run of the same bytes (a crash), found by digest.
        Index("ix_edi_interchange_digest", "partner", "direction", "digest"),
    )

    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True,
                                                          autoincrement=True))
    partner: str = Field(sa_column=Column(String(40), nullable=False))
    #: ``in`` or ``out``.
    direction: str = Field(sa_column=Column(String(3), nullable=False))
    #: ISA05:ISA06 of the sender.
    sender: str = Field(sa_column=Column(String(20), nullable=False))
    isa13: int = Field(sa_column=Column(BigInteger, nullable=False))
    #: Inbound, while this row is the interchange's first sighting: ``sender:isa13``.
    dedupe_key: str | None = Field(default=None, sa_column=Column(String(40), nullable=True))
    #: Inbound: what was wrong with it (JSON list of sentences), to re-record after a crash.
    problems: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: sha256 of the interchange's bytes.
    digest: str = Field(sa_column=Column(String(64), nullable=False))
    #: Outbound: ``allocated`` -> ``staged`` (its bytes fsynced under the stage name, the
    #: final rename next) -> ``written``.  Inbound: ``accepted``, ``rejected``,
    #: ``duplicate``, ``acknowledgment``.
    status: str = Field(sa_column=Column(String(16), nullable=False))
    #: What the interchange carries: ``997``, ``TA1``, ``855`` ... or ``850`` inbound.
    kind: str = Field(sa_column=Column(String(8), nullable=False))
    #: The file it came in (claimed name) or goes out as.
    file_name: str = Field(sa_column=Column(String(300), nullable=False))
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: Outbound answers: the inbound interchange they answer.
    answers: int | None = Field(default=None, sa_column=Column(_ID, nullable=True))
    #: TA1 received for an outbound interchange (A/E/R) and its note.
    ta1: str | None = Field(default=None, sa_column=Column(String(8), nullable=True))
    resends: int = Field(default=0, sa_column=Column(Integer, nullable=False, default=0))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: Outbound: when its file got its final name.  Inbound: when its file was moved to
    #: ``processed/`` or ``failed/`` (unset: a crash cut its run short).
    written_at: datetime | None = Field(default=None,
                                        sa_column=Column(DateTime(timezone=True), nullable=True))


class EdiDocument(StateTable, table=True):
    __tablename__ = "edi_document"
    __table_args__ = (
        Index("ix_edi_document_business", "partner", "direction", "doc_type", "business_key",
              unique=True, postgresql_where=text("direction = 'out' AND business_key IS NOT NULL"),
              sqlite_where=text("direction = 'out' AND business_key IS NOT NULL")),
        Index("ix_edi_document_ack", "partner", "direction", "gs06", "st02"),
        Index("ix_edi_document_order", "order_key"),
        Index("ix_edi_document_po", "partner", "doc_type", "po_number"),
    )

    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True,
                                                          autoincrement=True))
    partner: str = Field(sa_column=Column(String(40), nullable=False))
    direction: str = Field(sa_column=Column(String(3), nullable=False))
    doc_type: str = Field(sa_column=Column(String(4), nullable=False))
    interchange_id: int = Field(sa_column=Column(_ID, nullable=False, index=True))
    gs06: int = Field(sa_column=Column(BigInteger, nullable=False))
    st02: str = Field(sa_column=Column(String(9), nullable=False))
    #: The business object: ``order``/``shipment``/``invoice`` and its canonical key.
    business_domain: str | None = Field(default=None, sa_column=Column(String(16)))
    business_key: str | None = Field(default=None, sa_column=Column(String(64)))
    order_key: str | None = Field(default=None, sa_column=Column(String(64)))
    po_number: str | None = Field(default=None, sa_column=Column(String(30)))
    correlation_id: str | None = Field(default=None,
                                       sa_column=Column(String(128), index=True))
    #: Outbound: ``pending`` until its 997, then ``A``/``E``/``R``; ``none`` when the
    #: partner sends no 997s.  Inbound: the AK5 code we answered with.
    ack_status: str = Field(sa_column=Column(String(8), nullable=False))
    ack_note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    ack_at: datetime | None = Field(default=None,
                                    sa_column=Column(DateTime(timezone=True), nullable=True))
    #: JSON facts kept to answer later (an 850's ordered lines for its 855).
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class EdiCounter(StateTable, table=True):
    __tablename__ = "edi_counter"

    partner: str = Field(sa_column=Column(String(40), primary_key=True))
    #: ``isa``, ``gs``, ``st`` or ``order_key``.
    kind: str = Field(sa_column=Column(String(16), primary_key=True))
    last: int = Field(sa_column=Column(BigInteger, nullable=False))


class EdiEvent(StateTable, table=True):
    __tablename__ = "edi_event"

    id: int | None = Field(default=None, sa_column=Column(_ID, primary_key=True,
                                                          autoincrement=True))
    interchange_id: int = Field(sa_column=Column(_ID, nullable=False, index=True))
    action: str = Field(sa_column=Column(String(32), nullable=False))
    actor: str = Field(sa_column=Column(String(100), nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class EdiHeld(StateTable, table=True):
    """An outbound document that waits for the one of its order it must follow (an 856
    for the 855, an 810 for the 856; ``PartnerProfile.must_follow``): held here, durably,
    instead of by bus retries that may give up first.  Sending the document deletes its
    row in the transaction that records it; the batch that sends the awaited document, and
    every poll, release the held documents whose awaited one went out or whose hold is
    over (revision 0018; 0016 held 810s only)."""

    __tablename__ = "edi_held"
    __table_args__ = (Index("ix_edi_held_order", "partner", "order_key"),
                      Index("ix_edi_held_release", "release_after"))

    partner: str = Field(sa_column=Column(String(40), primary_key=True))
    #: The held document: ``856`` or ``810``.
    doc_type: str = Field(sa_column=Column(String(4), primary_key=True))
    #: Its business object's key (the shipment's for an 856, the invoice's for an 810).
    business_key: str = Field(sa_column=Column(String(64), primary_key=True))
    order_key: str = Field(sa_column=Column(String(64), nullable=False))
    #: The document of the same order it waits for: ``855`` or ``856``.
    waits_for: str = Field(sa_column=Column(String(4), nullable=False))
    #: The event (JSON of the envelope), handled again at release.
    envelope: str = Field(sa_column=Column(Text, nullable=False))
    #: When it was first held (a re-hold, for a redelivery or a second awaited document,
    #: keeps it): its age in ``coexist edi status``.
    held_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    #: The event's time plus the hold: from then on it goes without what it waits for.
    release_after: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


INTERCHANGE = EdiInterchange.__table__
DOCUMENT = EdiDocument.__table__
COUNTER = EdiCounter.__table__
EVENT = EdiEvent.__table__
HELD = EdiHeld.__table__
