"""Helpers shared by CLI commands: error reporting and settings."""

from __future__ import annotations

import sys

import click

from bus.errors import BusError


class UserError(click.ClickException):
    """A problem the user can fix (bad argument, unreachable system): one line, exit 2."""

    exit_code = 2


def run_cli(group: click.Group) -> None:
    """Run ``group``, turning our own errors into one line on stderr and exit 2."""
    try:
        rv = group.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except BusError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except (ConnectionError, OSError) as exc:
        click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)
