"""``coexist db upgrade|current``: the schema revisions of coexist's databases.

coexist's processes never create or change a schema at start; they refuse a database
that is not at the revision their code needs, naming ``coexist db upgrade``.  Only the
embedded default's first start (``coexist run``, ``coexist demo`` with a new
``COEXIST_HOME``) creates a new, empty SQLite state database by itself.

* state database (``COEXIST_STATE_URL``): bus and state tables;
* ``--legacy`` (``COEXIST_LEGACY_URL``): what coexist installs into the legacy ERP - the
  change log ``CHGLOG``, its side tables and the capture triggers.

Exit codes: 0 done / at the head revision; 1 (``current``) not at the head revision;
2 bad input or an unreachable database.
"""

from __future__ import annotations

import click
from sqlalchemy.exc import SQLAlchemyError

from bus.errors import BusError
from workers.cli.common import UserError
from workers.config import redact_url

_LEGACY = click.option("--legacy", is_flag=True,
                       help="The legacy ERP's database (COEXIST_LEGACY_URL) instead of the "
                            "state database (COEXIST_STATE_URL).")
_URL = click.option("--url", default=None, metavar="URL",
                    help="Database URL (default: from the configuration).")


class NotCurrent(click.ClickException):
    """The database is not at the code's head revision (exit 1)."""

    exit_code = 1


def _target(app, legacy: bool, url: str | None, *,
            create: bool = False) -> tuple[str, str, str]:
    from workers.migrate import LEGACY, STATE

    settings = app.settings
    if legacy:
        return LEGACY, url or settings.legacy_url, "legacy database"
    if create and url is None and settings.state_url.startswith("sqlite"):
        settings.ensure_home()
    return STATE, url or settings.state_url, "state database"


def _engine(target: str, url: str):
    from workers.db import create_state_engine
    from workers.legacy_erp.schema import create_legacy_engine
    from workers.migrate import LEGACY

    if not url.startswith(("sqlite", "postgresql")):
        raise UserError(f"{redact_url(url)}: coexist's databases are sqlite:// or "
                        "postgresql:// URLs")
    try:
        return (create_legacy_engine if target == LEGACY else create_state_engine)(url)
    except (SQLAlchemyError, ValueError) as exc:
        raise UserError(f"{redact_url(url)}: {exc}") from None


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@click.group("db")
def db() -> None:
    """Schema revisions of coexist's databases: upgrade them, see where they stand."""


@db.command("upgrade")
@_LEGACY
@_URL
@click.pass_obj
def upgrade_cmd(app, legacy: bool, url: str | None) -> None:
    """Bring the database to this coexist's schema revision (safe to run again).

    A state database made by coexist 0.1.0 (no revision) is adopted and upgraded with
    every row kept.  Stop coexist's processes first when a revision says so in
    DEVELOPERS.md; upgrading while they run is safe for the revisions shipped so far.
    """
    from workers.legacy_erp.schema import upgrade_legacy_schema
    from workers.migrate import LEGACY, upgrade

    target, url, what = _target(app, legacy, url, create=True)
    engine = _engine(target, url)
    try:
        if target == LEGACY:
            before, after = upgrade_legacy_schema(engine)
        else:
            before, after = upgrade(engine, target)
    except BusError as exc:
        raise UserError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise UserError(f"cannot upgrade the {what} {redact_url(url)}: "
                        f"{_one_line(exc)}") from None
    finally:
        engine.dispose()
    if before == after:
        click.echo(f"{what} {redact_url(url)} is at revision {after}: nothing to do")
    else:
        click.echo(f"{what} {redact_url(url)} upgraded from "
                   f"{before or 'no revision'} to {after}")


@db.command("current")
@_LEGACY
@_URL
@click.pass_obj
def current_cmd(app, legacy: bool, url: str | None) -> None:
    """Show the database's schema revision and the one this coexist needs (exit 1 if older)."""
    from workers.migrate import check, revision, sqlite_path

    target, url, what = _target(app, legacy, url)
    path = sqlite_path(url)
    if path is not None and not path.exists():
        raise UserError(f"no {what} at {path}")
    engine = _engine(target, url)
    try:
        rev = revision(engine, target)
    except SQLAlchemyError as exc:
        raise UserError(f"cannot read the {what} {redact_url(url)}: {_one_line(exc)}") from None
    finally:
        engine.dispose()
    click.echo(f"{what} {redact_url(url)}: revision {rev.current or 'none'}, "
               f"this coexist needs {rev.head}")
    try:
        check(rev, f"the {what}")
    except BusError as exc:
        raise NotCurrent(str(exc)) from None
