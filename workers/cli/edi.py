"""``coexist edi``: acknowledgment status, audited resends, pending outbound files, documents,
one polling pass.

Partner profiles are the ``[[edi.partners]]`` section of the configuration's TOML file
(``COEXIST_CONFIG``, default ``$COEXIST_HOME/coexist.toml``; see
``coexistence/edi/profiles.py``); the state database is ``COEXIST_STATE_URL``.

Exit codes: 0 fine; 1 something needs attention (``status``) or nothing found
(``documents``); 2 bad input, no partner profiles or an unreachable system.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table

from workers.cli.common import UserError


def _deps(app):
    from workers.edi.handlers import EdiDeps

    edi = app.settings.edi
    if edi is None or not edi.partners:
        where = app.settings.config_file or app.settings.home / "coexist.toml"
        raise UserError(f"no EDI trading partners configured: add [[edi.partners]] to the "
                        f"TOML configuration (COEXIST_CONFIG, here {where})")

    def no_lookup(key: str):
        raise UserError("this command does not read the ERPs")

    return EdiDeps(app.state, edi, app.exceptions, unit_of=no_lookup, get_order=no_lookup)


@click.group()
def edi() -> None:
    """EDI trading partners: acknowledgments, resends, pending files, documents."""


@edi.command()
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
def status(app, fmt: str) -> None:
    """Outbound sets unacknowledged past the partner's window, rejected (AK5 R) or accepted
    with errors (AK5 E), and the documents held for the one of their order they must
    follow (an 856 for its 855, an 810 for its 856), with their age.  Exit 1 when a set
    has a problem or a held document is past its hold (no poll sent it)."""
    from workers.edi.handlers import acknowledgment_problems, held_documents

    deps = _deps(app)
    now = datetime.now(UTC)
    problems = acknowledgment_problems(deps.engine, deps.settings, now=now)
    held = held_documents(deps.engine, now=now)
    rows = [{
        "problem": p.problem, "partner": p.document.partner, "type": p.document.doc_type,
        "isa13": p.document.isa13, "gs06": p.document.gs06, "st02": p.document.st02,
        "business": f"{p.document.business_domain}:{p.document.business_key}",
        "sent_at": p.document.created_at.isoformat(), "note": p.document.ack_note,
    } for p in problems] + [{
        "problem": "held_past_hold" if h.overdue else "held", "partner": h.partner,
        "type": h.doc_type, "isa13": None, "gs06": None, "st02": None,
        "business": f"{h.business_domain}:{h.business_key}", "order": f"order:{h.order_key}",
        "waits_for": h.waits_for, "held_at": h.held_at.isoformat(), "age_s": h.age_s,
        "release_after": h.release_after.isoformat(),
        "note": f"waits for the {h.waits_for} of order {h.order_key}",
    } for h in held]
    failing = bool(problems) or any(h.overdue for h in held)
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
    else:
        console = Console(file=sys.stdout, width=160)
        table = Table("problem", "partner", "set", "ISA13/GS06/ST02", "for", "sent", "note")
        for p in problems:
            d = p.document
            table.add_row(p.problem, d.partner, d.doc_type, f"{d.isa13}/{d.gs06}/{d.st02}",
                          f"{d.business_domain}:{d.business_key}",
                          f"{d.created_at:%Y-%m-%d %H:%M}", d.ack_note or "")
        console.print(table if problems else "every outbound set is acknowledged or within "
                                            "its partner's window")
        if held:
            htable = Table("held", "partner", "set", "for", "order", "waits for", "age",
                           "goes without it at",
                           title="documents held for the one of their order they follow")
            for h in held:
                htable.add_row("past its hold" if h.overdue else "held", h.partner,
                               h.doc_type, f"{h.business_domain}:{h.business_key}",
                               h.order_key, h.waits_for, _age(h.age_s),
                               f"{h.release_after:%Y-%m-%d %H:%M}")
            console.print(htable)
        else:
            console.print("no document is held for another one of its order")
    sys.exit(1 if failing else 0)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@edi.command()
@click.argument("interchange_id", type=int)
@click.option("--reason", required=True, help="Why it is sent again (audited).")
@click.option("--actor", help="Who asks (audited; default: COEXIST_ACTOR, else USER).")
@click.pass_obj
def resend(app, interchange_id: int, reason: str, actor: str | None) -> None:
    """Send outbound interchange ID again: the same bytes, so the same control numbers."""
    from workers.edi.handlers import resend as do_resend

    deps = _deps(app)
    path = do_resend(deps, interchange_id, actor=app.actor(actor), reason=reason)
    click.echo(f"interchange {interchange_id} is in {path} (identical bytes, same control "
               "numbers); audited")


@edi.command()
@click.pass_obj
def flush(app) -> None:
    """Write every outbound interchange whose numbers were committed but whose file is missing
    (a worker died in between); the same bytes, so no gap and no reuse."""
    from workers.edi.handlers import flush_pending

    written = flush_pending(_deps(app))
    click.echo(f"{len(written)} pending interchange(s) written"
               + (f": {', '.join(map(str, written))}" if written else ""))


@edi.command()
@click.pass_obj
def poll(app) -> None:
    """One pass over every partner's inbound/ folder (for cron, when no `coexist worker`
    runs the edi channel): write pending outbound files, then claim and answer every
    complete inbound file, then send the held documents whose awaited one (the 855 of an
    856, the 856 of an 810) is out or whose hold is over.
    Reads the systems of record (units, orders) as the router does.  Exit 1 when a file
    went to failed/."""
    from workers.edi.consumer import EdiPoller

    _deps(app)
    s = app.settings
    result = EdiPoller(app.edi, poll_s=s.edi_poll_s,
                       abandoned_after_s=s.edi_claim_timeout_s).run_once()
    click.echo(f"{result['files']} inbound file(s) answered ({result['failed']} to failed/, "
               f"{result['orders']} order command(s)); {result['flushed']} pending outbound "
               f"file(s) written; {result['released']} held document(s) sent")
    sys.exit(1 if result["failed"] else 0)


@edi.command()
@click.argument("target")
@click.pass_obj
def documents(app, target: str) -> None:
    """EDI documents of one business object (``order:KEY``, ``shipment:KEY``,
    ``invoice:KEY``) or one correlation id, with control numbers and acknowledgment state,
    and its documents held for the one they follow (not numbered yet: an 856 waiting for
    its 855, an 810 for its 856)."""
    from workers.edi.handlers import documents_for, held_documents

    deps = _deps(app)
    now = datetime.now(UTC)
    domain, sep, key = target.partition(":")
    if sep and domain in ("order", "shipment", "invoice"):
        docs = documents_for(deps.engine, domain=domain, key=key)
        held = (held_documents(deps.engine, now=now, order_key=key) if domain == "order"
                else held_documents(deps.engine, now=now, domain=domain, key=key))
    else:
        docs = documents_for(deps.engine, correlation_id=target)
        held = held_documents(deps.engine, now=now, correlation_id=target)
    table = Table("when", "dir", "partner", "set", "ISA13/GS06/ST02", "ack", "file")
    for d in docs:
        table.add_row(f"{d.created_at:%Y-%m-%d %H:%M:%S}", d.direction, d.partner, d.doc_type,
                      f"{d.isa13}/{d.gs06}/{d.st02}", d.ack_status, d.file_name)
    for h in held:
        table.add_row(f"{h.held_at:%Y-%m-%d %H:%M:%S}", "held", h.partner, h.doc_type,
                      "-/-/- (not numbered)",
                      f"past its hold (held {_age(h.age_s)})" if h.overdue else
                      f"waits for the {h.waits_for} until {h.release_after:%Y-%m-%d %H:%M} "
                      f"(held {_age(h.age_s)})",
                      f"{h.business_domain}:{h.business_key}")
    found = bool(docs or held)
    Console(file=sys.stdout, width=160).print(table if found else
                                              f"no EDI documents for {target}")
    sys.exit(0 if found else 1)
