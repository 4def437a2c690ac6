"""kill -9 of the portal's consumer (``coexist worker``) and dispatcher (``coexist portal
deliver``) as OS processes, in the middle of the work, against a real HTTP receiver that
verifies every signature with the independent ``standardwebhooks`` package and dedupes by
``webhook-id``: after both restart, every webhook arrived at least once and was applied once,
nothing is left pending and nothing was dead-lettered."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time

import dramatiq
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from tests.support import cloud_sim
from tests.support import records as r
from tests.support.processes import Process, coexist_env, coexist_executable, wait_until
from tests.support.receiver import BadSignature, WebhookInbox, read_request, serving
from tests.support.state import upgraded_state
from workers.bootstrap import App
from workers.config import Settings, SubscriptionSection
from workers.portal.events import webhook_id
from workers.portal.store import DELIVERED, DELIVERY

pytestmark = pytest.mark.integration

simulator, sim = cloud_sim.simulator, cloud_sim.sim

CUSTOMERS = ("10001", "10002", "10003")
#: Order events queued on coexist.channel.portal (one webhook each).
#: Six of the channel's batches (200 each): a kill after the first commit lands mid-work
#: even when the test process is descheduled for a while between seeing it and killing
#: (with three, CI at load 9-10 once saw all 600 queued before the kill landed).
EVENTS = 1200
#: The restart's delivery took 29-46 s at load 10-17 (three endpoints, two in flight each):
#: the bound is what is lost, not speed, so it leaves room for a loaded CI machine.
WAIT_S = 120.0


class DedupingReceiver:
    """A customer's webhook receiver: verifies, then applies each ``webhook-id`` once."""

    def __init__(self) -> None:
        self.secrets: dict[str, Webhook] = {}
        self.applied: dict[str, bytes] = {}
        self.inbox = WebhookInbox()

    @property
    def received(self) -> int:
        return self.inbox.received

    @property
    def duplicates(self) -> int:
        return self.inbox.duplicates

    @property
    def bad(self) -> list[str]:
        return self.inbox.bad

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        request = await read_request(scope, receive)
        if request is None:
            return
        body, headers = request
        status = 204
        try:
            wid = self.inbox.take(self.secrets[scope["path"]], body, headers, scope["path"])
        except BadSignature:
            status = 400
        else:
            if wid is not None:
                self.applied[wid] = body
        # The receiver's own work after applying: a dispatcher killed now never learns of
        # the success and sends the message again (the receiver dedupes it).
        await asyncio.sleep(0.05)
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def receiver():
    with serving(DedupingReceiver()) as rec:
        yield rec


def _cli(env, *args) -> str:
    out = subprocess.run([*coexist_executable(), *args], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


def test_kill_9_of_consumer_and_dispatcher_loses_nothing_and_applies_each_webhook_once(
        tmp_path, sim, receiver):
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    upgraded_state(state_url)
    (tmp_path / "coexist.toml").write_text('[subscriptions.portal]\ndomains = ["order"]\n')
    env = coexist_env(tmp_path, cloud_url=sim.url, actor="ops")
    for customer in CUSTOMERS:
        out = _cli(env, "portal", "endpoint", "add", "--customer", customer, "--url",
                   f"http://127.0.0.1:{receiver.port}/{customer}", "--reason", "onboarding")
        receiver.secrets[f"/{customer}"] = Webhook(re.search(r"(whsec_\S+)", out).group(1))

    # What the router's fan-out leaves on the channel's queue (durable, embedded broker).
    settings = Settings(home=tmp_path, state_url=state_url, subscriptions={
        "portal": SubscriptionSection(domains=("order",))})
    envs = [new_envelope(domain="order", kind="event", key=f"3{i:05d}",
                         payload={"record": r.order(f"3{i:05d}", CUSTOMERS[i % 3])
                                  .model_dump(mode="json")},
                         source_system="legacy", source_version=1, flag_version=0)
            for i in range(EVENTS)]
    app = App(settings)
    try:
        for env_ in envs:
            app.broker.enqueue(dramatiq.Message(
                queue_name="coexist.channel.portal", actor_name="channel_portal",
                args=(env_.model_dump(mode="json"),), kwargs={}, options={},
                message_id=env_.message_id))
        state = app.state

        def queued() -> int:
            with state.connect() as conn:
                return conn.execute(select(func.count()).select_from(DELIVERY)).scalar_one()

        def delivered() -> int:
            with state.connect() as conn:
                return conn.execute(select(func.count()).select_from(DELIVERY).where(
                    DELIVERY.c.status == DELIVERED)).scalar_one()

        worker = Process(["worker", "--threads", "2"], env, tmp_path / "worker.log")
        dispatcher = Process(["portal", "deliver", "--threads", "4", "--timeout-s", "2",
                              "--lease-margin-s", "1"], env, tmp_path / "deliver.log")
        try:
            wait_until(lambda: queued() >= 20, WAIT_S, "the consumer queues webhooks",
                       poll_s=0.005)
            worker.signal(signal.SIGKILL)
            worker.popen.wait(10)
            at_worker_kill = queued()
            wait_until(lambda: receiver.received >= 10, WAIT_S, "webhooks arrive",
                       poll_s=0.005)
            dispatcher.signal(signal.SIGKILL)
            dispatcher.popen.wait(10)
            at_dispatcher_kill = receiver.received
        finally:
            worker.stop()
            dispatcher.stop()
        assert at_worker_kill < EVENTS, "the consumer was killed in the middle of its work"
        assert at_dispatcher_kill < EVENTS, "the dispatcher was killed mid-delivery"

        worker = Process(["worker", "--threads", "2"], env, tmp_path / "worker2.log")
        dispatcher = Process(["portal", "deliver", "--threads", "4", "--timeout-s", "2",
                              "--lease-margin-s", "1"], env, tmp_path / "deliver2.log")
        restarted = time.monotonic()
        try:
            wait_until(lambda: delivered() == EVENTS, WAIT_S,
                       "every queued webhook is delivered after the restart")
            drained_s = time.monotonic() - restarted
        finally:
            assert worker.stop() == 0, worker.output()[-3000:]
            assert dispatcher.stop() == 0, dispatcher.output()[-3000:]
        assert queued() == EVENTS, "each event queued one webhook, never two"
        assert receiver.bad == []
        assert set(receiver.applied) == {webhook_id(e) for e in envs}
        assert receiver.received == len(receiver.applied) + receiver.duplicates
        assert ExceptionStore(state).open_count() == 0
        print(f"killed the consumer at {at_worker_kill}/{EVENTS} queued and the dispatcher "
              f"at {at_dispatcher_kill} received; {receiver.duplicates} duplicate "
              f"delivery(ies) deduped by webhook-id; all delivered {drained_s:.1f} s after "
              f"the restart (bound {WAIT_S:g} s)")
    finally:
        app.close()
