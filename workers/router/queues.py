"""Queue and actor names of the router, and the channel subscription list.

Queues (RabbitMQ or the embedded broker):

* ``coexist.write.legacy`` / ``coexist.write.cloud``: writer actors, one per ERP;
* ``coexist.command``: channel commands (CRM account, EDI 850, portal order);
* ``coexist.report``: business exceptions the router raises on purpose (stray
  writes, ownership violations) so they land in the exception store by the
  normal failure path;
* ``coexist.channel.<name>``: one per channel subscriber (canonical events from
  the SoR only).
"""

from __future__ import annotations

from dataclasses import dataclass

from coexistence.router import CLOUD, LEGACY

WRITE_QUEUE = {LEGACY: "coexist.write.legacy", CLOUD: "coexist.write.cloud"}
WRITE_ACTOR = {LEGACY: "write_legacy", CLOUD: "write_cloud"}
COMMAND_QUEUE = "coexist.command"
COMMAND_ACTOR = "route_command"
REPORT_QUEUE = "coexist.report"
REPORT_ACTOR = "report_business_exception"

#: Envelope kinds.
KIND_UPSERT = "upsert"
KIND_DELETE = "delete"
#: Re-send of the SoR's state (or its absence: no record in the payload) over a stray write
#: or a reconciliation finding, under the last routed version.
KIND_REPAIR = "repair"
KIND_COMMAND = "command"
KIND_EVENT = "event"
KIND_STRAY = "stray_write"
KIND_OWNERSHIP = "ownership_violation"
#: A stray that stayed (its system became the SoR before its repair landed).
KIND_STRAY_KEPT = "stray_kept"


@dataclass(frozen=True, slots=True)
class Subscription:
    """A channel that receives canonical events of ``domains`` from the SoR (of ``kinds``:
    ``event`` for a record as it is now, ``delete`` for one that is gone)."""

    name: str
    domains: frozenset[str]
    kinds: frozenset[str] = frozenset({KIND_EVENT, KIND_DELETE})

    def wants(self, domain: str, kind: str) -> bool:
        return domain in self.domains and kind in self.kinds

    @property
    def queue(self) -> str:
        return f"coexist.channel.{self.name}"

    @property
    def actor(self) -> str:
        return f"channel_{self.name}"


#: Change user under which a channel command is written into the SoR.  It is
#: not ``COEXIST_WRITER``: the SoR's change capture must route the command's
#: write on to the shadow and the channels, in the SoR's own order.  At most
#: 10 characters (the legacy ERP's LCHGUSER column).
COMMAND_WRITERS: dict[str, str] = {
    "crm": "COEXCRM",
    "edi": "COEXEDI",
    "portal": "COEXPORTAL",
}
COMMAND_WRITER_ORIGIN: dict[str, str] = {v: k for k, v in COMMAND_WRITERS.items()}


def origin_of(writer: str) -> str:
    """The field-ownership source of a captured change: a channel, or ``erp`` for people."""
    return COMMAND_WRITER_ORIGIN.get(writer, "erp")
