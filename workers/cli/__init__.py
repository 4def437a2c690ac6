"""The ``coexist`` command line.

Each command group lives in its own module and is registered here; ``coexist
--help`` lists exactly what is built.  User errors are reported as one clear
line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import click

from workers.cli.common import run_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="coexist")
def cli() -> None:
    """coexist: keep a legacy ERP, a cloud ERP and their channels consistent during migration."""


def _register() -> None:
    # One import + add_command per command module; keep them in CLI order.
    from workers.cli.demo import demo

    cli.add_command(demo)
    from workers.cli.cutover import cutover

    cli.add_command(cutover)
    from workers.cli.legacy import legacy

    cli.add_command(legacy)

    from workers.cli.dlq import dlq

    cli.add_command(dlq)
    from workers.cli.sample import sample

    cli.add_command(sample)
    from workers.cli.run import router, run, worker

    cli.add_command(run)
    cli.add_command(router)
    cli.add_command(worker)
    from workers.cli.reconcile import reconcile

    cli.add_command(reconcile)
    from workers.cli.trace import trace

    cli.add_command(trace)
    from workers.cli.status import status

    cli.add_command(status)
    from workers.cli.edi import edi

    cli.add_command(edi)
    from workers.cli.crm_sim import crm_sim

    cli.add_command(crm_sim)
    from workers.cli.api import api
    from workers.cli.portal import portal

    cli.add_command(api)
    cli.add_command(portal)
    from workers.cli.db import db

    cli.add_command(db)


_register()


def main() -> None:
    run_cli(cli)
