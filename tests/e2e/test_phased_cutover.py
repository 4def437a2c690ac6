"""A full phased cutover on the reference ERPs: the legacy SQL ERP (SQLite) and the cloud
simulator over HTTP, on the embedded broker and on RabbitMQ.  Every domain goes legacy ->
shadow -> cloud -> cloud_only in dependency order while people keep editing both ERPs, with
a rollback from cloud.  After each step every record both ERPs share is equal through the
translators; stray writes are reported; pinned documents do not move; nothing loops.  The
CRM (simulator process, channel ``crm``) is kept in sync throughout: after every step it
shows every customer, order, shipment and invoice as its SoR has it (read through the CRM's
own API), and what people typed into the CRM is in the SoR (or refused and set back)."""

from __future__ import annotations

import pytest

from bus.exception_store import ExceptionStore
from coexistence.canonical import DOMAINS
from coexistence.router import CLOUD, LEGACY
from coexistence.sample import SampleSpec
from tests.support import cloud_sim, crm_sim
from workers.bootstrap import bootstrap
from workers.config import CrmSection, Settings, SubscriptionSection
from workers.crm.consumer import CrmPoller
from workers.crm.scenario import for_app as crm_people
from workers.driver import Driver
from workers.edi.demo import demo_sections
from workers.flags import FlagAuditLog
from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
from workers.legacy_erp.seed import seed_legacy
from workers.portal.flow import PortalFlow
from workers.router.state import get_route
from workers.scenario import PhasedCutover, normalised, reconciler

simulator, sim = cloud_sim.simulator, cloud_sim.sim
crm_simulator, crm = crm_sim.crm_simulator, crm_sim.crm

#: The sample's first customer: the demo trading partner's buyer.
EDI_CUSTOMER = "10000"


@pytest.fixture(params=["embedded", "rabbitmq"])
def driver(request, tmp_path, sim):
    broker_url = None
    if request.param == "rabbitmq":
        broker_url = request.getfixturevalue("rabbit_vhost")
    legacy_url = f"sqlite:///{tmp_path / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    seed_legacy(engine, SampleSpec(customers=6, products=8))
    engine.dispose()
    # The trading partner is mock-edi: its ids, the folders it reads and writes.
    sections = demo_sections(tmp_path, EDI_CUSTOMER, partner_id="MOCKEDI", our_id="NORTHWIND")
    sections["subscriptions"]["portal"] = SubscriptionSection(
        domains=("order", "shipment", "invoice", "price"))
    # The CRM channel rides along on the embedded broker (its RabbitMQ path is proven by the
    # kill -9 test in tests/integration/test_crm_processes.py).
    crm = request.getfixturevalue("crm") if request.param == "embedded" else None
    channel = {} if crm is None else {
        "crm": CrmSection(url=crm.url, client_id=crm.client_id),
        "crm_client_secret": crm.client_secret}
    if crm is not None:
        sections["subscriptions"]["crm"] = SubscriptionSection(
            domains=("customer", "order", "shipment", "invoice"))
    settings = Settings(
        home=tmp_path, state_url=f"sqlite:///{tmp_path / 'state.db'}", legacy_url=legacy_url,
        broker_url=broker_url, queue_type="classic", redis_url=None, redis_prefix="coexist:",
        cloud_url=sim.url, **sections, **channel,
    )
    app = bootstrap(settings, create_state=True)
    app.broker.flush_all()
    d = Driver(app)
    poller = CrmPoller(app) if crm is not None else None
    if poller is not None:
        d.pollers.append(lambda: (stats := poller.run_once()) and stats.read or 0)
    d.crm = crm  # type: ignore[attr-defined]
    yield d
    if poller is not None:
        poller.lease.release()
    d.stop()


def test_a_phased_cutover_keeps_both_erps_equal_reports_strays_and_loops_nothing(driver, sim):
    app = driver.app
    mock = mock_edi(app)
    portal = PortalFlow(app, verify=_standard_webhooks)
    crm = driver.crm
    people = None if crm is None else crm_people(
        app, crm.admin, same=lambda a, b: normalised(a) == normalised(b))
    scenario = PhasedCutover(driver, cloud_people=sim.person_upsert, changes_per_domain=2,
                             report=lambda r: None, reconcile=reconciler(app), edi=True,
                             edi_buyer=mock_buyer(mock) if mock else None, portal=portal,
                             crm=people)
    try:
        reports = scenario.run()
        judged = mock_judges(mock, scenario) if mock else None
        _the_portal_flow_reached_the_right_sor_and_its_receiver_equals_it(portal, app)
    finally:
        portal.close()
        if mock:
            mock.__exit__(None, None, None)
    if people is not None:
        _the_crm_kept_up(reports, people)

    compared = [r for r in reports if r.agreements]
    assert len(compared) >= 5
    for report in compared:
        assert set(report.agreements) == set(DOMAINS)
        for domain, agreement in report.agreements.items():
            assert agreement.agrees, (report.title, domain, agreement)
            assert agreement.legacy_rows > 0

    # Every domain reached cloud_only through every mode, in dependency order, and every
    # move passed the guards on a stored reconciliation: nothing was forced.
    assert set(reports[-1].modes.values()) == {"cloud_only"}
    history = FlagAuditLog(app.state).history(limit=1000)
    assert {(e.domain, str(e.after.mode)) for e in history} >= {
        (d, m) for d in DOMAINS for m in ("shadow", "cloud", "cloud_only")}
    assert [e for e in history if e.forced] == []
    # Every stray write made was captured once and reported once, in both phases.
    made = [n for r in reports for n in r.notes if n.startswith("stray write into")]
    assert len(made) >= len(DOMAINS)
    assert reports[-1].strays == len(made)
    stray_records = ExceptionStore(app.state).list(status=None, limit=1000)
    assert sum(1 for r in stray_records if r.error_type == "StrayWrite") == len(made)

    # No write loop: once settled, nothing is left to capture, relay or consume.
    again = driver.settle()
    assert again.read == 0

    # The open order edited in legacy after the switch is still pinned there and equal.
    note = next(n for r in reports for n in r.notes if n.startswith("open order"))
    assert "copied to cloud (pinned)" in note
    key = note.split()[2]
    with app.state.connect() as conn:
        assert get_route(conn, "order", key).pinned_sor == LEGACY
    assert app.erps[CLOUD].get("order", key) is not None

    # The trading partner: 850s before the order domain moved became orders in the legacy
    # ERP, after it in the cloud (pinned there), and each order's 997, 855, 856 and 810
    # came out of that ERP (checked by the scenario with coexist's own reader).
    assert scenario.edi.problems == []
    assert [o.sor for o in scenario.edi.orders] == [LEGACY, LEGACY, CLOUD, CLOUD]
    assert all(set(o.documents) == {"997", "855", "856", "810"} for o in scenario.edi.orders)
    # ansi-x12, an independent parser, reads every outbound file.
    x12core = pytest.importorskip("x12.core.parser")
    from x12.core.tokenizer import tokenize_x12

    outbound = [p for p in (app.settings.home / "edi" / "DEMOBUY" / "outbound").rglob("*.x12")
                if not p.name.startswith(".")]
    # 4 orders x (997, 855, 856, 810): a 17th file would be a document sent twice (or a
    # TA1 for an interchange the partner sent again); name them all if it fails.
    assert len(outbound) == 16, sorted(
        (p.relative_to(app.settings.home).as_posix(), p.read_bytes()[90:106],
         p.read_bytes().partition(b"ST*")[2][:12]) for p in outbound)
    for path in outbound:
        assert x12core.parse_x12_interchange(tokenize_x12(path.read_bytes())).header.tag == "ISA"
    # mock-edi, the buyer: no business disagreement, every line confirmed, shipped and
    # invoiced in full, and its 997s accepted every 855, 856 and 810.
    if judged is not None:
        disagreements, lines, acks = judged
        assert disagreements == []
        assert lines and all(c == s == i for c, s, i in lines), lines
        assert acks == {"855": {"A"}, "856": {"A"}, "810": {"A"}, "997": {"none"}}


def mock_edi(app):
    """mock-edi (test-only, MIT) as the trading partner, on the partner's folders."""
    try:
        from mockedi.testing import Mock
    except ImportError:
        return None
    folder = app.edi.folder(app.settings.edi.partners[0]).ensure()
    mock = Mock.start(drop_dir=str(folder.outbound), pickup_dir=str(folder.inbound),
                      drop_settle_ms=0)
    mock.__enter__()
    return mock


def mock_buyer(mock):
    def buy(order, units):
        r = mock.post("/_mock/purchase", {
            "partner": "NORTHWIND", "po_number": order.customer_po,
            "requested_on": order.requested_date.isoformat(),
            "lines": [{"sku": ln.sku, "quantity": str(ln.quantity), "uom": units[ln.sku],
                       "price": str(ln.unit_price)} for ln in order.lines]})
        assert r.status == 201, r.body
        mock.advance(everything=True)
        mock.settle()

    return buy


def mock_judges(mock, scenario):
    """mock-edi reads what is left in our outbound/, answers with 997s; we read those."""
    from workers.edi.consumer import EdiPoller
    from workers.edi.handlers import documents_for

    mock.post("/_mock/drop/scan")
    mock.advance(everything=True)
    mock.settle()
    app = scenario.app
    EdiPoller(app.edi, poll_s=1).run_once()  # its 997s
    disagreements = mock.get("/_mock/disagreements?partner=NORTHWIND").body
    lines = [(ln["confirmed"], ln["shipped"], ln["invoiced"]) for o in scenario.edi.orders
             for ln in mock.order(o.po, partner="NORTHWIND")["lines"]]
    acks: dict[str, set[str]] = {}
    for o in scenario.edi.orders:
        for d in documents_for(app.state, domain="order", key=o.key):
            if d.direction == "out":
                acks.setdefault(d.doc_type, set()).add(d.ack_status)
    return disagreements, lines, acks

def _standard_webhooks(secret: str, headers: dict[str, str], body: bytes) -> str:
    """The receiver verifies every delivery with the independent ``standardwebhooks``."""
    from standardwebhooks import Webhook

    Webhook(secret).verify(body, headers)
    return headers["webhook-id"]


def _the_portal_flow_reached_the_right_sor_and_its_receiver_equals_it(portal, app):
    """The portal order placed before the order domain moved went to the legacy ERP and stays
    pinned there; the one placed after went to the cloud; every webhook arrived signed (each
    verified by ``standardwebhooks``) and a receiver applying only newer versions ends equal
    to the SoR."""
    from sqlalchemy import select

    from workers.portal.store import DELIVERED, DELIVERY

    before, after = portal.orders
    assert (before.system, after.system) == (LEGACY, CLOUD)
    assert before.replayed_same and after.replayed_same
    assert get_route_pin(app, before.order_key) == LEGACY
    assert [v["answered_by"] for v in portal.view()] == [LEGACY, CLOUD]
    r = portal.receiver
    assert r.rejected == [] and r.verified > 0 and len(r.held) > 0
    assert {("order.status_changed", before.order_key),
            ("order.status_changed", after.order_key)} <= set(r.held)
    assert portal.differences() == []
    with app.state.connect() as conn:
        rows = conn.execute(select(DELIVERY)).all()
    assert rows and {row.status for row in rows} == {DELIVERED}
    assert r.seen == {row.webhook_id for row in rows}


def get_route_pin(app, order_key):
    with app.state.connect() as conn:
        route = get_route(conn, "order", order_key)
    return route.pinned_sor if route else None


def _the_crm_kept_up(reports, people) -> None:
    """The CRM agrees with the SoR after every step, and the people's CRM edits (a new
    company -> one numbered customer, a contact -> the SoR, a credit limit -> refused and
    set back) ended where the rules say, in every working phase (legacy, cloud, cloud_only)."""
    for report in reports:
        assert report.crm is not None and report.crm.agrees, (report.title, report.crm.line())
        assert all(a.sor_rows > 0 for a in report.crm.agreements.values()), report.title
    edits = [e for r in reports for e in r.crm.edits]
    assert len(edits) == 3 * 3 and all(ok for _, ok in edits), edits
    assert len(people.onboarded) == 3
