"""One contract for foreign-key lookups, held by the fake, the legacy and the cloud adapters."""

from __future__ import annotations

import httpx
import pytest

from tests.support import api_world as w
from tests.support import cloud_sim
from workers.api.queries import CloudQueries, LegacyQueries, MemoryQueries, QueryError
from workers.cloud_erp import CloudErp
from workers.erp_memory import InMemoryErp
from workers.legacy_erp.adapter import LegacyErp
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema

simulator, sim = cloud_sim.simulator, cloud_sim.sim


class QueriesContract:
    @pytest.fixture
    def queries(self):
        raise NotImplementedError

    @pytest.mark.parametrize(("domain", "field", "value", "keys"), [
        ("price", "customer_key", w.ACCOUNT, ["2001"]),
        ("order", "customer_key", w.ACCOUNT, ["300001", "300003"]),
        ("invoice", "customer_key", w.ACCOUNT, ["500001"]),
        ("invoice", "order_key", "300003", ["500001"]),
        ("shipment", "order_key", "300001", ["400001"]),
        ("inventory", "sku", w.SKU, ["W01:WID-1000", "W02:WID-1000"]),
        ("order", "customer_key", "19999", []),
        ("inventory", "sku", "NONE-1", []),
    ])
    def test_find_returns_exactly_the_records_that_refer_to_the_value_sorted_by_key(
            self, queries, domain, field, value, keys):
        found = queries.find(domain, field, value)
        assert [r.key for r in found] == keys
        assert all(getattr(r, field) == value for r in found)

    def test_a_value_the_erp_cannot_hold_finds_nothing(self, queries):
        assert queries.find("order", "customer_key", "not-a-number") == []

    def test_a_lookup_that_is_not_supported_is_refused_by_name(self, queries):
        with pytest.raises(QueryError, match="customer by region"):
            queries.find("customer", "region", "WEST")


class TestMemoryQueries(QueriesContract):
    @pytest.fixture
    def queries(self):
        erp = InMemoryErp("memory")
        w.seed(erp, w.records())
        return MemoryQueries(erp)


class TestLegacyQueries(QueriesContract):
    @pytest.fixture
    def queries(self, tmp_path):
        engine = create_legacy_engine(f"sqlite:///{tmp_path / 'legacy.db'}")
        create_legacy_schema(engine)
        erp = LegacyErp(engine)
        w.seed(erp, w.records())
        yield LegacyQueries(erp)
        engine.dispose()


class TestCloudQueries(QueriesContract):
    @pytest.fixture
    def queries(self, sim):
        with CloudErp(sim.url) as erp:
            w.seed(erp, w.records())
        client = httpx.Client(base_url=sim.url)
        yield CloudQueries(client)
        client.close()
