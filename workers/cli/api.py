"""``coexist api``: serve the governed API, write its OpenAPI document, make a consumer token.

* ``serve``: the ASGI app (``workers.api.app``) under uvicorn, until SIGTERM;
* ``openapi``: the OpenAPI document as JSON (``docs/openapi.json`` is this output);
* ``token``: a new bearer token and the consumers-file entry that admits it.

Configuration (``workers.config``): ``COEXIST_API_CONSUMERS`` (the consumers JSON file),
``COEXIST_API_CACHE_TTL_S``, ``COEXIST_API_SERVE_STALE``, ``COEXIST_API_STALE_MAX_S``,
``COEXIST_API_RETRY_AFTER_S``, ``COEXIST_API_ORDER_NUMBER_BASE``,
``COEXIST_API_IDEMPOTENCY_TTL_S``, ``COEXIST_API_RATE_PER_S``, ``COEXIST_API_RATE_BURST``
(rate limits shared through ``COEXIST_REDIS_URL`` when set), ``COEXIST_API_TRACE_*``;
the ERPs, state and broker as for every command.
"""

from __future__ import annotations

import gc
import json

import click

from workers.cli.common import UserError


def openapi_document() -> dict:
    """The OpenAPI document of the app (built on an empty world: routes do not depend on it)."""
    from sqlalchemy.pool import StaticPool

    from coexistence.flags import FlagSource
    from workers.api.app import create_app
    from workers.api.auth import Consumers
    from workers.api.deps import ApiDeps
    from workers.db import create_state_engine

    engine = create_state_engine("sqlite://", poolclass=StaticPool)
    try:
        deps = ApiDeps.build(erps={}, queries={}, flags=FlagSource(), state=engine,
                             consumers=Consumers([]))
        return create_app(deps).openapi()
    finally:
        engine.dispose()


def api_deps(app, settings=None):
    """The API's dependencies over a bootstrapped ``App`` (the composition root)."""
    from workers.api.auth import ConsumerConfigError
    from workers.api.deps import ApiConfigError, ApiDeps, ApiSettings

    try:
        return ApiDeps.from_app(app, settings or ApiSettings.from_settings(app.settings))
    except (ConsumerConfigError, ApiConfigError) as exc:
        raise UserError(str(exc)) from None


def _open_app(root):
    """A started app with the ERPs the API reads, from the root's parts; the cloud adapter
    fails fast (one attempt): the API answers 503 + Retry-After and the caller retries,
    never the API."""
    from workers.bootstrap import App, start

    erps = {"legacy": root.legacy}
    if root.settings.cloud_url:
        erps["cloud"] = root.cloud_client(attempts=1)
    return start(App(root.settings, erps=erps), register=False)


@click.group()
def api() -> None:
    """The governed API: serve it, print its OpenAPI document, make consumer tokens."""


@api.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
@click.option("--log-level", default="info", show_default=True)
@click.option("--http", "http_impl", type=click.Choice(["httptools", "h11"]),
              default="httptools", show_default=True,
              help="uvicorn's HTTP implementation (h11: pure Python, about twice the CPU "
                   "per request).")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None,
              help="Serve Prometheus metrics (requests and 429s per consumer) on "
                   "127.0.0.1:PORT.")
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, log_level: str, http_impl: str,
          metrics_port: int | None) -> None:
    """Serve the API until SIGTERM (uvicorn finishes the requests in flight)."""
    import uvicorn

    from bus.context import configure_logging
    from workers.api.app import create_app

    configure_logging(log_level.upper())
    root = ctx.obj
    app = root if root.has("erps") else _open_app(root)
    asgi = None
    try:
        asgi = create_app(api_deps(app))
        if metrics_port is not None:
            from workers import metrics_server

            try:
                metrics_server.serve(metrics_port)
            except OSError as exc:
                raise UserError(str(exc)) from None
        # What is built so far lives as long as the process: out of the collector's reach,
        # a full collection costs 0.02 ms instead of 91-100 ms (scripts/bench/api_gc.py).
        gc.collect()
        gc.freeze()
        # httptools, not h11: h11's pure-Python parsing and header validation were 60 % of
        # the process's GIL time on the warm inquiry path (py-spy); no proxy-headers
        # middleware: nothing here reads the client's address.
        uvicorn.run(asgi, host=host, port=port, log_level=log_level, access_log=False,
                    lifespan="off", http=http_impl, proxy_headers=False)
    finally:
        if asgi is not None and asgi.inquiry_trace is not None:
            asgi.inquiry_trace.close()  # the last second's sampled inquiries
        if app is not root:
            cloud = app.erps.get("cloud")
            app.close()
            if cloud is not None:
                cloud.close()


@api.command("openapi")
def openapi_cmd() -> None:
    """Print the OpenAPI document (JSON)."""
    click.echo(json.dumps(openapi_document(), indent=2, sort_keys=True))


@api.command("token")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(["portal", "partner", "crm", "inquiry"]))
@click.option("--account", help="The customer account (portal and partner roles).")
@click.option("--child", "children", multiple=True, help="A child account (repeatable).")
def token_cmd(name: str, role: str, account: str | None, children: tuple[str, ...]) -> None:
    """A new bearer token (printed once) and the consumers-file entry that admits it."""
    from workers.api.auth import ConsumerConfigError, consumer_from, new_token, token_hash

    token = new_token()
    entry = {"name": name, "role": role, "token_sha256": token_hash(token)}
    if account:
        entry["account"] = account
    if children:
        entry["children"] = list(children)
    try:
        consumer_from(entry, "new consumer")
    except ConsumerConfigError as exc:
        raise UserError(str(exc)) from None
    click.echo(f"token (give it to {name}; it is not stored anywhere): {token}")
    click.echo("add to the consumers file:")
    click.echo(json.dumps(entry))
