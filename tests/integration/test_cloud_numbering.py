"""The cloud simulator gives a customer created without a number the next of its
sequence, and ``CloudErp.create_numbered`` is idempotent on its key (the simulator's
``Idempotency-Key`` replay): one CRM account, one customer."""

from __future__ import annotations

import httpx
import pytest

from coexistence.crm.onboarding import new_customer
from coexistence.ports import NumberingErp
from tests.support import cloud_sim
from workers.cloud_erp import CloudBusinessError, CloudErp
from workers.cloud_sim.app import NUMBERED_SETS

simulator, sim = cloud_sim.simulator, cloud_sim.sim

pytestmark = pytest.mark.integration

ACCOUNT = {"Name": "Walk-in Hardware", "BillingStreet": "1 Main St", "BillingCity": "Denver",
           "BillingState": "CO", "BillingPostalCode": "80202", "BillingCountry": "US"}
FIRST = NUMBERED_SETS["customers"]


def _new(name: str = "Walk-in Hardware"):
    return new_customer("0", {**ACCOUNT, "Name": name})


def test_the_cloud_numbers_a_customer_posted_without_a_number(sim):
    with CloudErp(sim.url, attempts=1) as erp:
        assert isinstance(erp, NumberingErp)
        first = erp.create_numbered(_new(), idempotency_key="a", writer="COEXCRM")
        second = erp.create_numbered(_new("Other Co"), idempotency_key="b", writer="COEXCRM")
        assert (first, second) == (str(FIRST), str(FIRST + 1))
        made = erp.get("customer", first)
        assert made.name == "Walk-in Hardware" and made.sites[0].postal_code == "80202"
        # The cloud's change feed names the writer (routed on, not an echo).
        assert {c.key: c.writer for c in erp.read(0, 100)} == {first: "COEXCRM",
                                                                second: "COEXCRM"}


def test_the_same_create_again_is_the_same_customer(sim):
    with CloudErp(sim.url, attempts=1) as erp:
        first = erp.create_numbered(_new(), idempotency_key="crm-onboard:1")
        assert erp.create_numbered(_new(), idempotency_key="crm-onboard:1") == first
        assert [c.key for c in erp.stream("customer")] == [first]
        # Another record under the key is refused, never a second customer.
        with pytest.raises(CloudBusinessError, match="Idempotency"):
            erp.create_numbered(_new("Renamed"), idempotency_key="crm-onboard:1")
        assert [c.key for c in erp.stream("customer")] == [first]


def test_a_number_a_client_chose_is_skipped(sim):
    with CloudErp(sim.url, attempts=1) as erp:
        erp.upsert(_new().model_copy(update={"key": str(FIRST + 4)}), source_version=1,
                   idempotency_key="typed")
        assert erp.create_numbered(_new("Next"), idempotency_key="n") == str(FIRST + 5)


def test_other_entity_sets_still_need_their_number(sim):
    answer = httpx.post(f"{sim.url}/items", json={"description": "x"})
    assert answer.status_code == 422 and "number" in answer.text
