"""The contract every ``coexistence.ports.Erp`` + ``ChangeFeed`` implementation keeps.

Subclass ``ErpContract`` (the class name must start with ``Test`` for pytest to
collect it) and provide a ``harness`` fixture yielding an ``ErpHarness`` on an
EMPTY ERP.  Override ``as_stored`` when the ERP stores a documented
normalisation of the canonical record (the legacy ERP upper-cases and truncates
text), and ``make_record`` when the ERP needs keys of a particular shape::

    class TestMemoryErp(ErpContract):
        @pytest.fixture
        def harness(self):
            erp = InMemoryErp()
            yield ErpHarness(erp=erp, feed=erp, person_upsert=erp.person_upsert)

The same tests then run against the fake, the legacy adapter (SQLite,
PostgreSQL) and the cloud adapter over the simulator, so the fake cannot drift
from the real thing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from coexistence.canonical import (
    DOMAINS,
    CanonicalRecord,
    ContractPrice,
    Customer,
    InventoryBalance,
    Invoice,
    Order,
    Product,
    Shipment,
)
from coexistence.ports import (
    COEXIST_WRITER,
    Applied,
    BatchErp,
    BulkReader,
    Change,
    Changed,
    ChangeFeed,
    Erp,
    Stale,
    WriteOp,
)

#: A person's user id in the tests (someone typing into the ERP by hand).
PERSON = "JSMITH"


@dataclass
class ErpHarness:
    """What the contract needs from one implementation."""

    erp: Erp
    feed: ChangeFeed
    #: Write ``record`` as a person with the given user id, bypassing coexist.
    person_upsert: Callable[[CanonicalRecord, str], None]


# ---------------------------------------------------------------------------- samples


def sample(domain: str, n: int, variant: int = 0) -> CanonicalRecord:
    """A valid record of ``domain`` numbered ``n``; ``variant`` changes its data, not its key.

    Values stay within what every ERP stores losslessly (upper-case text, whole
    cents, UTC times on whole seconds) so most implementations need no
    ``as_stored`` at all.
    """
    customer = str(10000 + n)
    sku = f"SKU-{1000 + n}"
    day = date(2026, 1, 1 + variant % 28)
    at = datetime(2026, 3, 1, 8, variant % 60, 0, tzinfo=UTC)
    if domain == "customer":
        return Customer(
            key=customer,
            name=f"ACME SUPPLY {n} V{variant}",
            status="active",
            currency="USD",
            credit_limit=Decimal(5000 + 100 * variant) + Decimal("0.25"),
            credit_hold=variant % 2 == 1,
            terms="net30",
            tax_id=f"TX{n:06d}",
            customer_group="RETAIL",
            region="WEST",
            sites=(
                {
                    "site_id": f"{customer}-01",
                    "kind": "ship_to",
                    "name": "MAIN DOCK",
                    "line1": f"{100 + variant} MAIN ST",
                    "city": "DENVER",
                    "region": "CO",
                    "postal_code": "80202",
                    "country": "US",
                },
            ),
        )
    if domain == "product":
        return Product(
            key=sku,
            description=f"WIDGET {n} V{variant}",
            unit="EA",
            weight_kg=Decimal("1.25"),
            status="active",
            currency="USD",
            list_price=Decimal(10 + variant) + Decimal("0.99"),
            standard_cost=Decimal("6.50"),
        )
    if domain == "price":
        return ContractPrice(
            key=f"{customer}:{sku}",
            customer_key=customer,
            sku=sku,
            currency="USD",
            breaks=(
                {"min_quantity": 1, "unit_price": Decimal(9 + variant) + Decimal("0.50")},
                {"min_quantity": 100, "unit_price": Decimal("8.75")},
            ),
            valid_from=day,
            valid_to=None,
        )
    if domain == "inventory":
        return InventoryBalance(
            key=f"WH1:{sku}", warehouse="WH1", sku=sku, on_hand=100 + variant, allocated=10
        )
    if domain == "order":
        return Order(
            key=f"SO{500000 + n}",
            customer_key=customer,
            status="open",
            channel="erp",
            customer_po=f"PO{n}",
            currency="USD",
            ordered_at=at,
            requested_date=day,
            lines=(
                {"line_no": 1, "sku": sku, "quantity": 5 + variant, "unit_price": Decimal("9.50")},
            ),
        )
    if domain == "shipment":
        return Shipment(
            key=f"SH{700000 + n}",
            order_key=f"SO{500000 + n}",
            warehouse="WH1",
            carrier="UPS",
            tracking_number=f"1Z{n:08d}{variant}",
            milestones=({"milestone": "picked", "at": at},),
            lines=({"line_no": 1, "order_line_no": 1, "sku": sku, "quantity": 5},),
        )
    if domain == "invoice":
        return Invoice(
            key=f"IN{900000 + n}",
            order_key=f"SO{500000 + n}",
            customer_key=customer,
            status="open",
            currency="USD",
            issued_on=day,
            due_on=date(2026, 2, 28),
            tax_amount=Decimal("3.80"),
            amount_paid=Decimal(variant),
            lines=(
                {
                    "line_no": 1,
                    "sku": sku,
                    "description": f"WIDGET {n}",
                    "quantity": 5,
                    "unit_price": Decimal("9.50"),
                },
            ),
        )
    raise ValueError(f"no sample for domain {domain!r}")


def new_key() -> str:
    """A fresh idempotency key, as the bus would derive from a message id."""
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------- contract


class ErpContract:
    """Abstract: subclass it and provide the ``harness`` fixture."""

    @pytest.fixture
    def harness(self) -> ErpHarness:  # pragma: no cover - always overridden
        raise NotImplementedError("subclasses provide an ErpHarness on an empty ERP")

    def as_stored(self, record: CanonicalRecord) -> CanonicalRecord:
        """The record as this ERP hands it back (identity unless its model is lossy)."""
        return record

    def make_record(self, domain: str, n: int, variant: int = 0) -> CanonicalRecord:
        return sample(domain, n, variant)

    # -------------------------------------------------------------- helpers

    def coexist_changes(self, h: ErpHarness, domain: str, key: str) -> list[Change]:
        return [
            c
            for c in read_all(h.feed)
            if c.domain == domain and c.key == key and c.writer == COEXIST_WRITER
        ]

    # -------------------------------------------------------------- reads and writes

    @pytest.mark.parametrize("domain", DOMAINS)
    def test_an_upserted_record_reads_back_as_written(self, harness, domain):
        record = self.make_record(domain, 1)
        result = harness.erp.upsert(record, source_version=10, idempotency_key=new_key())
        assert result == Applied(domain, record.key, 10)
        assert harness.erp.get(domain, record.key) == self.as_stored(record)

    @pytest.mark.parametrize("domain", ["customer", "inventory", "order"])
    def test_get_many_answers_each_existing_record_as_get_does(self, harness, domain):
        # BulkReader (one round trip for many keys): lines stay with their own header,
        # a composite key (inventory) matches as a whole, absent and repeated keys are fine.
        erp = harness.erp
        if not isinstance(erp, BulkReader):
            pytest.skip("not a BulkReader")
        records = [self.make_record(domain, n, variant=n) for n in (31, 32, 33)]
        for record in records:
            erp.upsert(record, source_version=5, idempotency_key=new_key())
        absent = self.make_record(domain, 39).key
        keys = [records[2].key, absent, records[0].key, records[1].key, records[0].key]
        found = erp.get_many(domain, keys)
        assert set(found) == {r.key for r in records}
        for record in records:
            assert found[record.key] == self.as_stored(record) == erp.get(domain, record.key)
        assert erp.get_many(domain, []) == {}

    def test_a_record_never_written_reads_as_none(self, harness):
        assert harness.erp.get("customer", "99999") is None

    def test_a_newer_version_replaces_the_record(self, harness):
        first, second = self.make_record("product", 2), self.make_record("product", 2, 1)
        harness.erp.upsert(first, source_version=1, idempotency_key=new_key())
        result = harness.erp.upsert(second, source_version=2, idempotency_key=new_key())
        assert result == Applied("product", second.key, 2)
        assert harness.erp.get("product", second.key) == self.as_stored(second)

    @pytest.mark.parametrize("incoming", [4, 5])
    def test_a_stale_update_never_overwrites_a_newer_one(self, harness, incoming):
        newer, older = self.make_record("customer", 3, 2), self.make_record("customer", 3, 1)
        harness.erp.upsert(newer, source_version=5, idempotency_key=new_key())
        result = harness.erp.upsert(older, source_version=incoming, idempotency_key=new_key())
        assert result == Stale("customer", newer.key, incoming, 5)
        assert harness.erp.get("customer", newer.key) == self.as_stored(newer)

    def test_a_write_repeated_with_its_idempotency_key_is_applied_once(self, harness):
        record, key = self.make_record("order", 4), new_key()
        first = harness.erp.upsert(record, source_version=7, idempotency_key=key)
        again = harness.erp.upsert(record, source_version=7, idempotency_key=key)
        assert first == Applied("order", record.key, 7)
        # A replay may report the first result or, having re-read the record, Stale.
        assert again in (first, Stale("order", record.key, 7, 7))
        assert len(self.coexist_changes(harness, "order", record.key)) == 1

    # -------------------------------------------------------------- deletes

    def test_a_delete_removes_the_record_and_an_older_upsert_cannot_resurrect_it(self, harness):
        record = self.make_record("inventory", 5)
        harness.erp.upsert(record, source_version=3, idempotency_key=new_key())
        deleted = harness.erp.delete(
            "inventory", record.key, source_version=4, idempotency_key=new_key()
        )
        assert deleted == Applied("inventory", record.key, 4)
        assert harness.erp.get("inventory", record.key) is None
        late = harness.erp.upsert(record, source_version=3, idempotency_key=new_key())
        assert late == Stale("inventory", record.key, 3, 4)
        assert harness.erp.get("inventory", record.key) is None
        revived = harness.erp.upsert(record, source_version=6, idempotency_key=new_key())
        assert revived == Applied("inventory", record.key, 6)
        assert harness.erp.get("inventory", record.key) == self.as_stored(record)

    def test_a_stale_delete_is_refused_and_the_record_stays(self, harness):
        record = self.make_record("invoice", 6)
        harness.erp.upsert(record, source_version=8, idempotency_key=new_key())
        result = harness.erp.delete(
            "invoice", record.key, source_version=8, idempotency_key=new_key()
        )
        assert result == Stale("invoice", record.key, 8, 8)
        assert harness.erp.get("invoice", record.key) == self.as_stored(record)

    def test_deleting_a_record_that_does_not_exist_is_applied_and_changes_nothing(self, harness):
        key = self.make_record("shipment", 7).key
        result = harness.erp.delete("shipment", key, source_version=1, idempotency_key=new_key())
        assert result == Applied("shipment", key, 1)
        assert harness.erp.get("shipment", key) is None

    # -------------------------------------------------------------- stream

    def test_stream_yields_every_record_of_the_domain_sorted_by_key(self, harness):
        records = [self.make_record("customer", n) for n in (12, 3, 250, 7, 41)]
        for i, record in enumerate(records):
            harness.erp.upsert(record, source_version=i + 1, idempotency_key=new_key())
        other = self.make_record("product", 1)
        harness.erp.upsert(other, source_version=1, idempotency_key=new_key())
        gone = records[0].key
        harness.erp.delete("customer", gone, source_version=99, idempotency_key=new_key())
        streamed = list(harness.erp.stream("customer"))
        expected = sorted((self.as_stored(r) for r in records[1:]), key=lambda r: r.key)
        assert [r.key for r in streamed] == [r.key for r in expected]
        assert streamed == expected

    def test_stream_of_an_empty_domain_yields_nothing(self, harness):
        assert list(harness.erp.stream("shipment")) == []

    # -------------------------------------------------------------- change feed

    def test_the_feed_names_coexist_for_its_writes_and_the_person_for_theirs(self, harness):
        record = self.make_record("customer", 8)
        harness.erp.upsert(record, source_version=1, idempotency_key=new_key())
        harness.person_upsert(self.make_record("customer", 8, 3), PERSON)
        harness.erp.delete("customer", record.key, source_version=2, idempotency_key=new_key())
        mine = [c for c in read_all(harness.feed) if c.key == record.key]
        assert [(c.domain, c.op, c.writer) for c in mine] == [
            ("customer", "upsert", COEXIST_WRITER),
            ("customer", "upsert", PERSON),
            ("customer", "delete", COEXIST_WRITER),
        ]
        versions = [c.version for c in mine]
        assert versions == sorted(set(versions)), "a record's version rises with each change"

    def test_the_feed_reads_in_cursor_order_after_a_checkpoint_in_batches(self, harness):
        records = [self.make_record("product", n) for n in range(20, 27)]
        for record in records:
            harness.erp.upsert(record, source_version=1, idempotency_key=new_key())
        everything = read_all(harness.feed)
        cursors = [c.cursor for c in everything]
        assert cursors == sorted(set(cursors)), "cursors strictly increase"
        assert [c.key for c in everything] == [r.key for r in records]
        checkpoint = everything[2].cursor
        batch = harness.feed.read(checkpoint, 3)
        assert [c.cursor for c in batch] == cursors[3:6]
        assert harness.feed.read(everything[-1].cursor, 10) == []

    def test_a_persons_write_does_not_raise_the_applied_version(self, harness):
        ours, theirs = self.make_record("price", 9), self.make_record("price", 9, 4)
        harness.erp.upsert(ours, source_version=5, idempotency_key=new_key())
        harness.person_upsert(theirs, PERSON)
        assert harness.erp.get("price", ours.key) == self.as_stored(theirs)
        # The SoR's next version overwrites the stray write; an old one still cannot.
        stale = harness.erp.upsert(ours, source_version=5, idempotency_key=new_key())
        assert stale == Stale("price", ours.key, 5, 5)
        fixed = harness.erp.upsert(ours, source_version=6, idempotency_key=new_key())
        assert fixed == Applied("price", ours.key, 6)
        assert harness.erp.get("price", ours.key) == self.as_stored(ours)

    # -------------------------------------------------------------- writer and repair

    def test_a_command_written_under_a_channel_writer_is_named_so_in_the_feed(self, harness):
        record = self.make_record("customer", 10)
        result = harness.erp.upsert(record, source_version=3, idempotency_key=new_key(),
                                    writer="COEXCRM")
        assert result == Applied("customer", record.key, 3)
        [change] = [c for c in read_all(harness.feed) if c.key == record.key]
        assert change.writer == "COEXCRM"

    def test_a_repair_reapplies_an_equal_version_over_a_persons_write(self, harness):
        ours, theirs = self.make_record("product", 11), self.make_record("product", 11, 2)
        harness.erp.upsert(ours, source_version=7, idempotency_key=new_key())
        harness.person_upsert(theirs, PERSON)
        fixed = harness.erp.upsert(ours, source_version=7, idempotency_key=new_key(),
                                   repair=True)
        assert fixed == Applied("product", ours.key, 7)
        assert harness.erp.get("product", ours.key) == self.as_stored(ours)

    def test_a_repair_never_applies_an_older_version(self, harness):
        ours, older = self.make_record("product", 12), self.make_record("product", 12, 5)
        harness.erp.upsert(ours, source_version=9, idempotency_key=new_key())
        stale = harness.erp.upsert(older, source_version=8, idempotency_key=new_key(),
                                   repair=True)
        assert stale == Stale("product", ours.key, 8, 9)
        assert harness.erp.get("product", ours.key) == self.as_stored(ours)

    def test_a_repair_delete_removes_a_record_at_an_equal_version(self, harness):
        ours = self.make_record("customer", 13)
        harness.erp.upsert(ours, source_version=4, idempotency_key=new_key())
        done = harness.erp.delete("customer", ours.key, source_version=4,
                                  idempotency_key=new_key(), repair=True)
        assert done == Applied("customer", ours.key, 4)
        assert harness.erp.get("customer", ours.key) is None

    # -------------------------------------------------------------- batches (BatchErp)

    def test_read_many_answers_each_record_and_its_revision_tombstones_included(self, harness):
        erp = harness.erp
        assert isinstance(erp, BatchErp)
        live, gone = self.make_record("customer", 20), self.make_record("customer", 21)
        erp.upsert(live, source_version=3, idempotency_key=new_key())
        erp.upsert(gone, source_version=3, idempotency_key=new_key())
        erp.delete("customer", gone.key, source_version=4, idempotency_key=new_key())
        read = erp.read_many("customer", [live.key, gone.key, "99998"])
        assert read[live.key][0] == self.as_stored(live)
        assert read[live.key][1] == erp.get_current("customer", live.key)
        assert read[gone.key][0] is None and read[gone.key][1].exists is False
        assert read[gone.key][1].version == 4
        assert read["99998"] == (None, None)

    def test_write_many_gives_each_op_its_own_result(self, harness):
        erp = harness.erp
        new, old, bye = (self.make_record("customer", n) for n in (22, 23, 24))
        erp.upsert(old, source_version=9, idempotency_key=new_key())
        erp.upsert(bye, source_version=1, idempotency_key=new_key())
        read = erp.read_many("customer", [new.key, old.key, bye.key])
        results = erp.write_many([
            WriteOp("customer", new.key, new, 5, new_key(), read[new.key][1]),
            WriteOp("customer", old.key, self.make_record("customer", 23, 1), 8, new_key(),
                    read[old.key][1]),
            WriteOp("customer", bye.key, None, 2, new_key(), read[bye.key][1]),
        ])
        assert [type(r) for r in results] == [Applied, Stale, Applied]
        assert results[1] == Stale("customer", old.key, 8, 9)
        assert erp.get("customer", new.key) == self.as_stored(new)
        assert erp.get("customer", old.key) == self.as_stored(old)
        assert erp.get("customer", bye.key) is None

    def test_a_batched_write_never_overwrites_an_edit_made_since_its_read(self, harness):
        erp = harness.erp
        ours, theirs = self.make_record("customer", 25), self.make_record("customer", 25, 3)
        newcomer = self.make_record("customer", 26)
        erp.upsert(ours, source_version=2, idempotency_key=new_key())
        read = erp.read_many("customer", [ours.key, newcomer.key])
        # A person edits one record and creates the other after the read, before the write.
        harness.person_upsert(theirs, PERSON)
        harness.person_upsert(newcomer, PERSON)
        results = erp.write_many([
            WriteOp("customer", ours.key, self.make_record("customer", 25, 1), 7, new_key(),
                    read[ours.key][1]),
            WriteOp("customer", newcomer.key, self.make_record("customer", 26, 1), 7,
                    new_key(), read[newcomer.key][1]),
        ])
        assert [type(r) for r in results] == [Changed, Changed]
        assert results[0].current.writer == PERSON
        assert erp.get("customer", ours.key) == self.as_stored(theirs)
        assert erp.get("customer", newcomer.key) == self.as_stored(newcomer)


def read_all(feed: ChangeFeed, batch: int = 500) -> list[Change]:
    """Every change in the feed, read in batches from the start."""
    out: list[Change] = []
    after = 0
    while True:
        page = feed.read(after, batch)
        if not page:
            return out
        out.extend(page)
        after = page[-1].cursor
