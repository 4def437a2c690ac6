"""``coexist config show`` and ``coexist doctor``: what is configured, and what answers."""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from workers.cli.common import NeedsAttention
from workers.config import redact_url


@click.group()
def config() -> None:
    """The configuration coexist runs with."""


@config.command("show")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_obj
def show(app, fmt: str) -> None:
    """Every setting, its value (credentials hidden) and where it came from: the
    environment, the env file (COEXIST_ENV_FILE), the TOML file (COEXIST_CONFIG) or the
    default.  A configuration that does not load is one line naming the setting (exit 2)."""
    rows = app.settings.describe()
    if fmt == "json":
        click.echo(json.dumps([{"name": n, "value": v, "from": o} for n, v, o in rows]))
        return
    width = max(len(n) for n, _, _ in rows)
    for name, value, origin in rows:
        click.echo(f"{name:<{width}}  {value}  ({origin})")


def _check(name: str, setting: str, target: str | None,
           probe: Callable[[], str]) -> tuple[str, bool, str]:
    """(part, answers, one line): a failure names the setting and its target."""
    from workers.errors import SetupError, first_line

    try:
        return name, True, probe()
    except SetupError as exc:
        return name, False, f"{exc.detail()}{exc.where() or f' ({setting})'}"
    except Exception as exc:  # noqa: BLE001 - doctor reports, never crashes
        return name, False, f"{first_line(exc)} ({setting}={redact_url(target)})"


@click.command("doctor")
@click.pass_obj
def doctor(app) -> None:
    """Connect to each configured part (state database, legacy ERP, cloud ERP, broker,
    Redis) and say, one line each, which answers.

    Exit status: 0 every configured part answers; 1 some do not (each named with its
    setting); 2 the configuration itself does not load.
    """
    from sqlalchemy import inspect

    from workers.observe.broker import read_broker

    s = app.settings  # a configuration error ends here, exit 2

    def state() -> str:
        tables = inspect(app.state).get_table_names()
        return f"{redact_url(s.state_url)} answers ({len(tables)} tables)"

    def legacy() -> str:
        from sqlalchemy import text

        with app.legacy_engine.connect() as conn:
            n = conn.execute(text('SELECT count(*) FROM "CHGLOG"')).scalar_one()
        return f"{redact_url(s.legacy_url)} answers ({n:,} change-log rows)"

    def cloud() -> str:
        if not s.cloud_url:
            return "not configured (COEXIST_CLOUD_URL)"
        client = app.cloud_probe()
        try:
            response = client.http.get("/health")
            response.raise_for_status()
        finally:
            client.close()
        return f"{redact_url(s.cloud_url)} answers (HTTP {response.status_code})"

    def broker() -> str:
        view = read_broker(s, app.queue_names())
        if not view.reachable:
            raise RuntimeError(f"does not answer: {view.error}")
        if not s.broker_url and not s.bus_path.is_file():
            # Nothing to answer yet: it is made by the first process (not "answers").
            return (f"embedded {view.url} not made yet (no coexist process has started "
                    "with this COEXIST_HOME)")
        detail = "; ".join(view.notes)
        return f"{view.kind} {view.url} answers ({view.source})" + (
            f"; {detail}" if detail else "")

    def redis() -> str:
        if not s.redis_url:
            return "not configured (COEXIST_REDIS_URL): flags in SQL"
        app.flag_store.client.ping()
        return f"{redact_url(s.redis_url)} answers"

    def subscriptions() -> str:
        subs = app.subscriptions
        if not subs:
            return "none configured ([subscriptions.NAME] in COEXIST_CONFIG)"
        return "; ".join(f"{x.name}: {', '.join(sorted(x.domains))}" for x in subs)

    checks = [
        _check("state database", "COEXIST_STATE_URL", s.state_url, state),
        _check("legacy ERP", "COEXIST_LEGACY_URL", s.legacy_url, legacy),
        _check("cloud ERP", "COEXIST_CLOUD_URL", s.cloud_url, cloud),
        _check("broker", "COEXIST_BROKER_URL" if s.broker_url else "COEXIST_HOME",
               s.broker_url or str(s.bus_path), broker),
        _check("Redis", "COEXIST_REDIS_URL", s.redis_url, redis),
        _check("subscriptions", "COEXIST_CONFIG", str(s.config_file or "-"), subscriptions),
    ]
    for name, ok, detail in checks:
        click.echo(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    failed = [name for name, ok, _ in checks if not ok]
    if failed:
        raise NeedsAttention(f"{', '.join(failed)} did not answer")
