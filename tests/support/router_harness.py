"""The router on fakes, in one thread: two in-memory ERPs, SQLite state, the real outbox.

Messages go through the real outbox and relay; the "broker" is a list, and a
"worker" pops it and calls the same handlers the actors call.  Business errors
are collected where the failure middleware would record them.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from bus.envelope import Envelope, new_envelope
from bus.errors import BusinessError
from bus.outbox import OutboxRelay, add_to_outbox
from coexistence.canonical import CanonicalRecord
from coexistence.flags import FlagSource, FlagState, Mode, Rollout
from coexistence.router import CLOUD, LEGACY
from workers.db import create_state_engine
from workers.erp_memory import InMemoryErp
from workers.migrate import upgrade as upgrade_schema
from workers.router import handlers, queues
from workers.router.capture import CaptureLoop, CaptureStats
from workers.router.state import get_route


@dataclass
class Harness:
    engine: object
    legacy: InMemoryErp = field(default_factory=lambda: InMemoryErp("legacy"))
    cloud: InMemoryErp = field(default_factory=lambda: InMemoryErp("cloud"))
    flags: FlagSource = field(default_factory=FlagSource)
    subscriber: queues.Subscription = queues.Subscription("probe", frozenset({"customer", "order"}))
    business_errors: list[tuple[str, Envelope, BusinessError]] = field(default_factory=list)
    events: dict[str, list[Envelope]] = field(default_factory=lambda: defaultdict(list))
    pending: list[tuple[str, Envelope]] = field(default_factory=list)
    captured: CaptureStats = field(default_factory=CaptureStats)
    #: Actors whose worker is "stopped": their messages wait in ``pending``.
    paused: set[str] = field(default_factory=set)
    #: Deliver the ERP writers' messages in batches, as the batch consumer does
    #: (``handlers.apply_writes``, then ``apply_write`` for what it leaves).
    batched: bool = True
    #: Batches the writers were handed, and messages they left to the single path.
    write_batches: int = 0
    left_alone: int = 0
    #: Messages a handler asked to have retried later (``handlers.SorBehind``): the
    #: caller puts them back in flight (``settle`` in its next round).
    retried: list[tuple[str, Envelope]] = field(default_factory=list)
    #: How many times that happened.
    retries: int = 0

    def __post_init__(self):
        self.erps = {LEGACY: self.legacy, CLOUD: self.cloud}
        self.loops = [
            CaptureLoop(system, erp, self.erps, self.flags, self.engine,
                        subscriptions=[self.subscriber])
            for system, erp in self.erps.items()
        ]
        self.relay = OutboxRelay(self.engine, self._publish)

    @classmethod
    def on_sqlite(cls, path) -> Harness:
        engine = create_state_engine(f"sqlite:///{path}")
        upgrade_schema(engine)
        return cls(engine)

    def set_mode(self, domain: str, mode: str, rollout: Rollout | None = None,
                 base: str | None = None) -> FlagState:
        old = self.flags.state(domain)
        state = FlagState(domain, Mode(mode), Mode(base or mode), rollout or Rollout(),
                          old.version + 1)
        self.flags.states[domain] = state
        return state

    def command(self, record: CanonicalRecord, channel: str, version: int) -> None:
        env = new_envelope(domain=record.domain, kind=queues.KIND_COMMAND, key=record.key,
                           payload={"record": record.model_dump(mode="json"),
                                    "channel": channel},
                           source_system=channel, source_version=version)
        with Session(self.engine) as session:
            add_to_outbox(session, env, actor_name=queues.COMMAND_ACTOR,
                          queue_name=queues.COMMAND_QUEUE)
            session.commit()

    def write_context(self) -> handlers.WriteContext:
        """What the writer actors get in production: flags, pins, the state database."""
        return handlers.WriteContext(self.flags, self._pinned_sor, self.engine, self.erps)

    def _pinned_sor(self, domain: str, key: str) -> str | None:
        with self.engine.connect() as conn:
            route = get_route(conn, domain, key)
        return route.pinned_sor if route else None

    def _publish(self, rows) -> None:
        for row in rows:
            self.pending.append((row.actor_name, Envelope.model_validate(row.envelope_dict())))

    def _send(self, actor: str, _queue: str, env: Envelope) -> None:
        self.pending.append((actor, env))

    def _dispatch(self, actor: str, env: Envelope) -> None:
        try:
            if actor == queues.WRITE_ACTOR[LEGACY]:
                handlers.apply_write(env, self.legacy, self._send, self.write_context())
            elif actor == queues.WRITE_ACTOR[CLOUD]:
                handlers.apply_write(env, self.cloud, self._send, self.write_context())
            elif actor == queues.COMMAND_ACTOR:
                handlers.route_command(env, self.erps, self.flags, self._send)
            elif actor == queues.REPORT_ACTOR:
                handlers.report(env)
            elif actor == self.subscriber.actor:
                self.events[env.key].append(env)
            else:
                raise AssertionError(f"no actor {actor}")
        except BusinessError as exc:
            self.business_errors.append((actor, env, exc))
        except handlers.SorBehind:
            # The retry middleware's part: the message comes back later (``retried``).
            self.retried.append((actor, env))
            self.retries += 1

    def _dispatch_batch(self, actor: str, envs: list[Envelope]) -> None:
        """The batch consumer's path for an ERP writer: the batch, then each left message
        alone (business errors collected per message, as the middleware records them)."""
        target = self.legacy if actor == queues.WRITE_ACTOR[LEGACY] else self.cloud
        self.write_batches += 1
        left = handlers.apply_writes(envs, target, self._send, self.write_context())
        self.left_alone += len(left)
        for i in left:
            self._dispatch(actor, envs[i])

    def settle(self, max_rounds: int = 50) -> None:
        """Capture, relay and deliver until nothing moves."""
        for _ in range(max_rounds):
            moved = 0
            for loop in self.loops:
                stats = loop.drain()
                self.captured.add(stats)
                moved += stats.read
            moved += self.relay.run_once(10_000)
            waiting = []
            writers = set(queues.WRITE_ACTOR.values())
            while self.pending:
                actor, env = self.pending.pop(0)
                if actor in self.paused:
                    waiting.append((actor, env))
                    continue
                if self.batched and actor in writers:
                    group = [env]
                    while self.pending and self.pending[0][0] == actor and len(group) < 200:
                        group.append(self.pending.pop(0)[1])
                    retried = len(self.retried)
                    self._dispatch_batch(actor, group)
                    moved += len(group) - (len(self.retried) - retried)
                    continue
                retried = len(self.retried)
                self._dispatch(actor, env)
                moved += 1 if len(self.retried) == retried else 0
            again, self.retried = self.retried, []
            self.pending[:0] = waiting + again
            if not moved:
                if again and not self.paused:
                    raise AssertionError(
                        f"{len(again)} message(s) retried with nothing else left to move: "
                        f"a repair waits for a routed write that never comes")
                return
        raise AssertionError("the router did not settle: a write loop?")
