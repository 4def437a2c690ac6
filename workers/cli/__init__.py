"""The ``coexist`` command line.

Each command group lives in its own module and is registered here; ``coexist
--help`` lists exactly what is built.  The group puts the composition root's
``App`` into click's ``ctx.obj`` (built lazily: ``--help`` opens nothing) and maps
every failure that reaches it to one line and a documented exit code:

* 0 done / all is well;
* 1 needs attention, a check refused the change, drift above the limit, nothing found;
* 2 bad input, bad configuration or an unreachable system (one line naming the
  setting and the target, credentials hidden);
* 3 a bug (run again with ``--debug`` for the traceback);
* 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import click

from workers.cli.common import Failure, run_cli
from workers.errors import EXIT_INTERRUPTED


class CoexistGroup(click.Group):
    """The one place where a failure becomes one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            from workers.errors import explain

            if _debug(ctx):
                raise
            message, code = explain(exc, _loaded_settings(ctx))
            raise Failure(message, code) from None


def _loaded_settings(ctx: click.Context):
    from workers.config import Settings

    app = ctx.obj
    settings = getattr(app, "_settings", None)
    return settings if isinstance(settings, Settings) else None


def _debug(ctx: click.Context) -> bool:
    if ctx.params.get("debug"):
        return True
    settings = _loaded_settings(ctx)
    return bool(settings is not None and settings.debug)


@click.group(cls=CoexistGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show the traceback of an error (also "
                                            "COEXIST_DEBUG=1).")
@click.version_option(package_name="coexist")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """coexist: keep a legacy ERP, a cloud ERP and their channels consistent during migration.

    Configuration: environment variables COEXIST_* (an env file with COEXIST_ENV_FILE,
    sections in a TOML file with COEXIST_CONFIG); see `coexist config show`.
    """
    if ctx.obj is None:
        from workers.bootstrap import App
        from workers.config import Settings

        app = App(Settings.from_env)
        ctx.obj = app
        ctx.call_on_close(app.close)


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
    from workers.cli.crm import crm
    from workers.cli.crm_sim import crm_sim

    cli.add_command(crm)
    cli.add_command(crm_sim)
    from workers.cli.api import api
    from workers.cli.portal import portal

    cli.add_command(api)
    cli.add_command(portal)
    from workers.cli.db import db

    cli.add_command(db)
    from workers.cli.config import config, doctor

    cli.add_command(config)
    cli.add_command(doctor)
    from workers.cli.console import console

    cli.add_command(console)
    from workers.cli.cloud_sim import cloud_sim

    cli.add_command(cloud_sim)


_register()


def main() -> None:
    run_cli(cli)
