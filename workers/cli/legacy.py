"""``coexist legacy init|seed|changes``: the legacy reference ERP's database."""

from __future__ import annotations

import click

from workers.cli.common import UserError

_URL = click.option("--url", default=None, metavar="URL",
                    help="Legacy database URL (default: COEXIST_LEGACY_URL or a SQLite file "
                         "under COEXIST_HOME).")


def _engine(app, url: str | None, *, create: bool):
    """(engine, url): ``init``/``seed`` create the reference ERP's schema, ``changes``
    reads an existing one only."""
    setting = "--url" if url else "COEXIST_LEGACY_URL"
    url = url or app.settings.legacy_url
    return app.open_legacy_engine(url, create=create, setting=setting), url


@click.group()
def legacy() -> None:
    """The legacy reference ERP: create its schema, seed it, look at its change log."""


@legacy.command("init")
@_URL
@click.pass_obj
def init_cmd(app, url: str | None) -> None:
    """Create the legacy tables, the change log and its triggers (idempotent)."""
    from sqlalchemy.exc import SQLAlchemyError

    from workers.config import redact_url
    from workers.legacy_erp.schema import create_legacy_schema

    engine, url = _engine(app, url, create=True)
    try:
        create_legacy_schema(engine)
    except SQLAlchemyError as exc:
        raise UserError(f"cannot create the legacy schema in {redact_url(url)}: "
                        f"{exc.__class__.__name__}: {getattr(exc, 'orig', exc)}") from None
    finally:
        engine.dispose()
    click.echo(f"legacy schema ready in {redact_url(url)}")


@legacy.command("seed")
@_URL
@click.option("--customers", type=click.IntRange(min=0), default=100, show_default=True,
              help="Customers to generate; the other domains scale with them.")
@click.option("--products", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--seed", "seed_value", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the sample generator (same seed, same data).")
@click.option("--batch", type=click.IntRange(min=1, max=100_000), default=1_000,
              show_default=True, help="Records per insert transaction.")
@click.pass_obj
def seed_cmd(app, url: str | None, customers: int, products: int, seed_value: int,
             batch: int) -> None:
    """Create the schema if needed and load the sample data into an empty legacy ERP.

    Prints the records per domain and the rows written per second.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from coexistence.sample import SampleSpec
    from workers.config import redact_url
    from workers.legacy_erp.seed import NotEmpty, seed_legacy

    try:
        spec = SampleSpec(customers=customers, products=products, seed=seed_value)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    engine, url = _engine(app, url, create=True)
    try:
        try:
            report = seed_legacy(engine, spec, batch_records=batch)
        except NotEmpty as exc:
            raise UserError(str(exc)) from None
        except SQLAlchemyError as exc:
            raise UserError(f"seeding {redact_url(url)} failed: {exc.__class__.__name__}: "
                            f"{getattr(exc, 'orig', exc)}") from None
    finally:
        engine.dispose()
    for domain, n in report.records.items():
        click.echo(f"{domain:<10} {n:>9,} records")
    click.echo(f"{report.rows:,} rows in {report.seconds:.2f} s "
               f"({report.rows_per_s:,.0f} rows/s) into {redact_url(url)}")
    click.echo(f"  generating {report.generate_s:.2f} s, translating {report.translate_s:.2f} s, "
               f"writing {report.write_s:.2f} s ({report.write_rows_per_s:,.0f} rows/s)")


@legacy.command("changes")
@_URL
@click.option("--after", type=click.IntRange(min=0), default=0, show_default=True,
              help="Show changes after this change-log sequence number.")
@click.option("--limit", type=click.IntRange(min=1, max=10_000), default=20, show_default=True)
@click.pass_obj
def changes_cmd(app, url: str | None, after: int, limit: int) -> None:
    """Show the legacy change log as coexist reads it (cursor, domain, key, op, writer)."""
    from sqlalchemy.exc import SQLAlchemyError

    from workers.config import redact_url

    target = app.with_settings(legacy_url=url) if url else app
    try:
        try:
            changes = target.legacy.read(after, limit)
        except SQLAlchemyError as exc:
            raise UserError(f"cannot read the change log of "
                            f"{redact_url(target.settings.legacy_url)}: "
                            f"{getattr(exc, 'orig', exc)}") from None
    finally:
        if target is not app:
            target.close()
    for c in changes:
        click.echo(f"{c.cursor:>10} {c.at:%Y-%m-%dT%H:%M:%S}Z {c.domain:<10} {c.key:<24} "
                   f"{c.op:<6} {c.writer}")
    if not changes:
        click.echo(f"no changes after {after}")
