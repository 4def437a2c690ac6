"""``coexist crm``: the CRM channel's operator commands.

* ``coexist crm load``: show every customer, order, shipment and invoice in the CRM as its
  SoR holds it now (the first load, or after the CRM was restored); safe to repeat: a
  record the channel already showed from a newer change is left alone.
* ``coexist crm resume``: end a pause of the channel now (after buying more API budget);
  the consumers send again at once instead of at the pause's end.
"""

from __future__ import annotations

import click

from workers.cli.common import UserError


@click.group("crm")
def crm() -> None:
    """The CRM channel: first load, pause."""


@crm.command("load")
@click.option("--domain", "domains", multiple=True,
              type=click.Choice(["customer", "order", "shipment", "invoice"]),
              help="Only these domains (repeatable; default: all four, in that order).")
@click.pass_obj
def load(app, domains: tuple[str, ...]) -> None:
    """Show every record of the CRM's domains in the CRM, each from its SoR."""
    from coexistence.crm.ports import CrmPaused, CrmUnavailable
    from workers.crm.load import LOAD_ORDER, load_crm

    if app.settings.crm is None:
        raise UserError("no [crm] section in the configuration (url, client_id; the secret "
                        "in COEXIST_CRM_CLIENT_SECRET)")
    wanted = [d for d in LOAD_ORDER if not domains or d in domains]
    try:
        report = load_crm(app, domains=wanted)
    except (CrmPaused, CrmUnavailable) as exc:
        raise UserError(f"CRM: {exc}; records already shown stay, run it again later") from None
    click.echo(f"CRM loaded: {report.line()}")


@crm.command("resume")
@click.pass_obj
def resume(app) -> None:
    """End the channel's pause now (the CRM must have API budget again)."""
    from workers.crm import state

    until = state.paused_until(app.state)
    state.resume(app.state)
    click.echo(f"CRM channel resumed (it was paused until {until.isoformat()})" if until
               else "CRM channel was not paused")
