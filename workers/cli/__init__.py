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

import importlib

import click

from workers.cli.common import Failure, run_cli
from workers.errors import EXIT_INTERRUPTED


class CoexistGroup(click.Group):
    """The one place where a failure becomes one line and an exit code; its commands are
    loaded on first use (``COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(self.commands) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return self.commands.get(cmd_name)

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


#: Every command: name -> (module, attribute), in CLI order.  A command's module is imported
#: only when that command runs (or ``--help`` lists them): a process such as ``coexist worker``
#: then loads what it uses, not every command's dependencies (about 0.5 s per process start).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("workers.cli.demo", "demo"),
    "cutover": ("workers.cli.cutover", "cutover"),
    "legacy": ("workers.cli.legacy", "legacy"),
    "dlq": ("workers.cli.dlq", "dlq"),
    "sample": ("workers.cli.sample", "sample"),
    "run": ("workers.cli.run", "run"),
    "router": ("workers.cli.run", "router"),
    "worker": ("workers.cli.run", "worker"),
    "reconcile": ("workers.cli.reconcile", "reconcile"),
    "trace": ("workers.cli.trace", "trace"),
    "status": ("workers.cli.status", "status"),
    "edi": ("workers.cli.edi", "edi"),
    "crm": ("workers.cli.crm", "crm"),
    "crm-sim": ("workers.cli.crm_sim", "crm_sim"),
    "api": ("workers.cli.api", "api"),
    "portal": ("workers.cli.portal", "portal"),
    "db": ("workers.cli.db", "db"),
    "config": ("workers.cli.config", "config"),
    "doctor": ("workers.cli.config", "doctor"),
    "console": ("workers.cli.console", "console"),
    "cloud-sim": ("workers.cli.cloud_sim", "cloud_sim"),
}


def main() -> None:
    run_cli(cli)
