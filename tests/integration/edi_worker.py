"""A process that runs the EDI channel's real code for the crash and race tests.

    python -m tests.integration.edi_worker allocate STATE_URL CONFIG N BARRIER
        record N outbound interchanges (one 997 set each), printing "isa13 gs06 st02" lines;
        waits for the file BARRIER to exist first, so several processes start together
    python -m tests.integration.edi_worker invoice STATE_URL CONFIG KEY [--kill-at-rename]
        send one invoice event through ``handlers.handle_events``; with --kill-at-rename the
        process SIGKILLs itself when the 810's file is about to get its final name
    python -m tests.integration.edi_worker flush STATE_URL CONFIG
        ``handlers.flush_pending`` once (what every worker's poll and batch run), printing
        the ids it wrote
"""

from __future__ import annotations

import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from bus.envelope import new_envelope
from bus.exception_store import ExceptionStore
from coexistence.canonical.models import Invoice
from coexistence.edi.profiles import EdiSettings
from workers.db import create_state_engine
from workers.edi import control, handlers


def main(argv: list[str]) -> None:
    mode, url, config = argv[:3]
    settings = EdiSettings.from_toml(Path(config).read_text())
    engine = create_state_engine(url)
    profile = settings.partners[0]
    if mode == "allocate":
        n, barrier = int(argv[3]), Path(argv[4])
        while not barrier.exists():
            time.sleep(0.005)
        body = [["AK1", "PO", "1"], ["AK9", "A", "0", "0", "0"]]
        for _ in range(n):
            with engine.begin() as conn:
                out = control.record_outbound(conn, profile, kind="997", at=datetime.now(UTC),
                                              sets=[control.OutSet("997", body)])
            text = out.content.decode()
            gs06 = text.split("GS*", 1)[1].split("*")[5]
            st02 = text.split("ST*997*", 1)[1].split("~", 1)[0]
            print(out.isa13, gs06, st02, flush=True)
        return
    if mode == "flush":
        deps = handlers.EdiDeps(engine, settings, ExceptionStore(engine),
                                unit_of=lambda s: "EA", get_order=lambda k: None)
        print(" ".join(map(str, handlers.flush_pending(deps))), flush=True)
        return
    key = argv[3]
    if "--kill-at-rename" in argv:
        from workers.edi.transport import FAULT_KILL_BEFORE_RENAME

        os.environ[FAULT_KILL_BEFORE_RENAME] = "810"  # die right before the final rename
    invoice = Invoice.model_validate({
        "key": key, "order_key": "100001", "customer_key": profile.customers[0],
        "status": "open", "currency": "USD", "issued_on": "2026-06-02", "due_on": "2026-07-02",
        "tax_amount": "1.00", "lines": [{"line_no": 1, "sku": "WID-01000", "description": "w",
                                         "quantity": 2, "unit_price": "3.00"}]})
    deps = handlers.EdiDeps(engine, settings, ExceptionStore(engine), unit_of=lambda s: "EA",
                            get_order=lambda k: None)
    env = new_envelope(domain="invoice", kind="event", key=key,
                       payload={"record": invoice.model_dump(mode="json")},
                       source_system="legacy", source_version=1)
    [outcome] = handlers.handle_events([env], deps)
    print(outcome.status, outcome.interchange_id, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
