"""``coexist demo``: a phased cutover of every domain on the embedded default.

No RabbitMQ, Redis or PostgreSQL: coexist's state, the embedded broker and the
legacy reference ERP are SQLite files under ``--home``; the cloud ERP simulator
runs as a subprocess on a free loopback port with its own SQLite file.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from workers.cli.common import UserError

if TYPE_CHECKING:
    from workers.scenario import StepReport


def _print_step(console: Console, n: int, report: StepReport) -> None:
    table = Table(title=f"step {n}: {report.title}", title_justify="left")
    for col in ("domain", "mode", "legacy", "cloud", "equal", "differ", "only L", "only C"):
        table.add_column(col, justify="left" if col in ("domain", "mode") else "right")
    for domain, mode in report.modes.items():
        a = report.agreements.get(domain)
        if a is None:
            table.add_row(domain, mode, "-", "-", "-", "-", "-", "-")
            continue
        table.add_row(domain, mode, str(a.legacy_rows), str(a.cloud_rows), str(a.equal),
                      str(len(a.mismatched)), str(len(a.only_legacy)), str(len(a.only_cloud)),
                      style=None if a.agrees else "bold red")
    console.print(table)
    exceptions = ", ".join(f"{k}: {v}" for k, v in sorted(report.exceptions.items())) or "none"
    console.print(f"  changes routed so far {report.routed}, echoes suppressed {report.echoes}, "
                  f"stray writes {report.strays}; open exceptions: {exceptions}")
    for note in report.notes:
        console.print(f"  - {note}")
    if report.crm is not None:
        console.print(f"  {report.crm.line()}", style=None if report.crm.agrees else "bold red",
                      highlight=False)


#: What the demo's portal subscription receives (``[subscriptions.portal]``).
PORTAL_DOMAINS = ("order", "shipment", "invoice", "price")


def _print_portal(console: Console, portal) -> None:
    """The portal customer's view: its orders through the API, its webhooks received."""
    table = Table(title=f"portal customer {portal.customer}: its orders (GET /v1/orders/KEY)",
                  title_justify="left")
    for col in ("order", "placed", "status", "lines", "answered by", "pinned"):
        table.add_column(col)
    for v in portal.view():
        table.add_row(v["order_key"], v["placed"], v["status"], str(v["lines"]),
                      v["answered_by"], "yes" if v["pinned"] else "no")
    console.print(table)
    r = portal.receiver
    console.print(f"  webhooks at {portal.endpoint.url}: {r.verified} received and verified "
                  f"(coexist's verifier), {len(r.rejected)} rejected, {r.duplicates} "
                  f"duplicate(s) deduped by webhook-id", highlight=False)
    if r.last is not None:
        last = r.last
        console.print(f"  last signed webhook: {last['type']} {last['key']} v{last['version']} "
                      f"(webhook-id {last['webhook-id']}, signature {last['signature']}, "
                      f"verified)", highlight=False)

#: The demo's OAuth client in its CRM simulator (its secret is made up per run).
DEMO_CRM_CLIENT = "coexist-demo"
#: What the demo's CRM shows.
CRM_DOMAINS = ("customer", "order", "shipment", "invoice")

#: Marks a folder as a demo home; only such a folder is ever emptied, and only of these.
DEMO_MARKER = ".coexist-demo"
DEMO_FILES = ("legacy.db", "state.db", "bus.db", "cloud.db", "crm.db", "coexist.toml")
#: The demo trading partner's drop folders (``workers.edi.demo``), replaced like the files.
DEMO_FOLDERS = ("edi",)
DEMO_LOG = "coexist.log"


def _first_customer(app, legacy_url: str) -> str:
    from workers.legacy_erp.adapter import LegacyErp

    engine = app.open_legacy_engine(legacy_url)
    try:
        return next(iter(LegacyErp(engine).stream("customer"))).key
    finally:
        engine.dispose()


def prepare_home(home: Path) -> None:
    """Make ``home`` an empty demo home: a new or empty folder, or one a previous demo made
    (only the demo's own files are removed).  Anything else is refused, nothing deleted."""
    if home.exists() and not home.is_dir():
        raise UserError(f"--home {home}: not a folder")
    if home.exists() and any(home.iterdir()):
        if not (home / DEMO_MARKER).is_file():
            raise UserError(f"--home {home} is not empty and is not a demo home (it has no "
                            f"{DEMO_MARKER}); choose a new or empty folder. Nothing was "
                            "deleted.")
        for name in DEMO_FILES:
            for suffix in ("", "-wal", "-shm", "-journal"):
                (home / f"{name}{suffix}").unlink(missing_ok=True)
        (home / DEMO_LOG).unlink(missing_ok=True)
        import shutil

        for name in DEMO_FOLDERS:
            if (home / name).is_dir():
                shutil.rmtree(home / name)
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("made by `coexist demo`; rerunning it replaces only "
                                    f"{', '.join(DEMO_FILES)}, {DEMO_LOG} and the folder(s) "
                                    f"{', '.join(DEMO_FOLDERS)} here\n")


@click.command("demo")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=Path("var/demo"),
              show_default=True, help="Folder for the demo's files: new, empty, or one an "
                                      "earlier demo made (only its files are replaced).")
@click.option("--customers", type=click.IntRange(1, 100_000), default=40, show_default=True,
              help="Sample size; every other domain scales from it.")
@click.option("--changes", type=click.IntRange(1, 50), default=3, show_default=True,
              help="People's edits per domain per step.")
@click.option("--keep", is_flag=True,
              help="Afterwards keep the cloud simulator up and serve the cutover console "
                   "over the demo's state until Ctrl-C.")
@click.option("--console-port", default=8090, show_default=True,
              type=click.IntRange(0, 65535), help="The console's port with --keep.")
def demo(home: Path, customers: int, changes: int, keep: bool, console_port: int) -> None:
    """Seed the legacy ERP, start the cloud simulator, and cut every domain over:
    legacy -> shadow -> cloud -> cloud_only, with a rollback drill, while people keep
    editing both ERPs.  Prints how far the ERPs agree after every step.

    The demo is the embedded default on its own folder: it reads no COEXIST_* setting."""
    from bus.context import configure_logging
    from coexistence.sample import SampleSpec
    from workers.bootstrap import App, bootstrap
    from workers.cloud_sim import start_simulator
    from workers.cloud_sim.admin import SimulatorAdmin
    from workers.config import CrmSection, Settings, SubscriptionSection
    from workers.crm.consumer import CrmPoller
    from workers.crm.scenario import for_app as crm_people
    from workers.crm_sim import start_crm_simulator
    from workers.crm_sim.admin import CrmSimulatorAdmin
    from workers.driver import Driver
    from workers.legacy_erp.seed import seed_legacy
    from workers.portal.flow import PortalFlow
    from workers.scenario import PhasedCutover, normalised, reconciler

    console = Console(width=None if Console().is_terminal else 110)
    home = home.resolve()
    prepare_home(home)
    started = time.perf_counter()
    # The console shows the steps; every log line (JSON, with correlation ids) goes to a file.
    log_file = (home / DEMO_LOG).open("a")
    configure_logging("INFO", stream=log_file)

    legacy_url = f"sqlite:///{home / 'legacy.db'}"
    engine = App(Settings(home=home)).open_legacy_engine(legacy_url, create=True)
    report = seed_legacy(engine, SampleSpec(customers=customers, products=max(20, customers // 2)))
    engine.dispose()
    counts = ", ".join(f"{d} {n}" for d, n in report.records.items())
    console.print(f"[bold]legacy ERP seeded[/] ({legacy_url}): {counts} "
                  f"({report.rows} rows in {report.seconds:.1f} s)")

    crm_secret = secrets.token_urlsafe(16)
    with start_simulator(home / "cloud.db") as sim, start_crm_simulator(
            home / "crm.db", clients={DEMO_CRM_CLIENT: crm_secret}) as crm_sim:
        console.print(f"[bold]cloud ERP simulator[/] at {sim.url}")
        console.print(f"[bold]CRM simulator[/] at {crm_sim.url} (channel crm: customers, "
                      "orders, shipments, invoices)")
        # One EDI trading partner, the buyer of the first customer (workers.edi.demo).
        from workers.edi.demo import demo_sections, demo_toml

        buyer = _first_customer(App(Settings(home=home)), legacy_url)
        # The demo's channel subscriptions, where `coexist status|run` on this home read them.
        (home / "coexist.toml").write_text(
            demo_toml(home, buyer)
            + "\n# the portal channel receives these domains' events\n"
            f"[subscriptions.portal]\ndomains = {json.dumps(list(PORTAL_DOMAINS))}\n")
        sections = demo_sections(home, buyer)
        sections["subscriptions"]["portal"] = SubscriptionSection(domains=PORTAL_DOMAINS)
        sections["subscriptions"]["crm"] = SubscriptionSection(domains=CRM_DOMAINS)
        settings = Settings(
            home=home, state_url=f"sqlite:///{home / 'state.db'}", legacy_url=legacy_url,
            cloud_url=sim.url, actor="coexist-demo",
            crm=CrmSection(url=crm_sim.url, client_id=DEMO_CRM_CLIENT),
            crm_client_secret=crm_secret, **sections)
        app = bootstrap(settings, create_state=True)
        driver = Driver(app)
        poller = CrmPoller(app)
        driver.pollers.append(lambda: (stats := poller.run_once()) and stats.read or 0)
        people = SimulatorAdmin(sim.url)
        portal = PortalFlow(app)
        console.print(f"[bold]portal customer[/] {portal.customer}: API at {portal.api.url} "
                      f"(in this process), webhook endpoint {portal.endpoint.id} -> "
                      f"{portal.endpoint.url}")
        crm_admin = CrmSimulatorAdmin(crm_sim.url)
        steps = iter(range(1, 100))
        scenario = PhasedCutover(
            driver, cloud_people=people.person_upsert, changes_per_domain=changes,
            report=lambda r: _print_step(console, next(steps), r), reconcile=reconciler(app),
            edi=True,
            portal=portal,
            crm=crm_people(app, crm_admin, same=lambda a, b: normalised(a) == normalised(b)),
        )
        try:
            reports = scenario.run()
            _print_portal(console, portal)
        finally:
            portal.close()
            people.close()
            crm_admin.close()
            poller.lease.release()
            driver.stop()
        if keep:
            _report_run(console, reports, started, home, scenario)
            _serve_console(app, console_port)
            log_file.close()
            return

    disagreements = _report_run(console, reports, started, home, scenario)
    log_file.close()
    if disagreements:
        raise SystemExit(1)


def _report_run(console: Console, reports, started: float, home: Path, scenario) -> int:
    disagreements = sum(1 for r in reports for a in r.agreements.values() if not a.agrees)
    edi_problems = scenario.edi.problems if scenario.edi is not None else []
    disagreements += len(edi_problems)
    disagreements += sum(1 for r in reports if r.crm is not None and not r.crm.agrees)
    elapsed = time.perf_counter() - started
    console.print(
        f"\n[bold]{'done' if not disagreements else 'DONE WITH DISAGREEMENTS'}[/] in "
        f"{elapsed:.1f} s: {len(reports)} steps, {disagreements} domain/step disagreements.")
    for line in closing_hints(home, scenario):
        click.echo(line)
    return disagreements


def _serve_console(app, port: int) -> None:
    """The cutover console over the demo's state (the simulator still answers for traces)."""
    import uvicorn

    from workers.console.app import Sampler, create_app

    sampler = Sampler(app)
    sampler.start()
    click.echo(f"\ncutover console: http://127.0.0.1:{port}/  (Ctrl-C stops it and the "
               "cloud simulator)")
    try:
        uvicorn.run(create_app(app, sampler=sampler), host="127.0.0.1", port=port,
                    log_level="warning", access_log=False, lifespan="off")
    finally:
        sampler.stop()


def closing_hints(home: Path, scenario) -> list[str]:
    """How to look around afterwards: whole commands, one a line (never wrapped), naming
    records the demo really touched, and why a reconciliation now reports drift."""
    from shlex import quote

    h = quote(str(home))
    stray = next((key for _system, domain, key in scenario.strays if domain == "customer"),
                 None)
    edited = next((key for _s, domain, key in scenario.edits if domain == "customer"), None)
    key = stray or edited
    after = sorted(scenario.edited_after_cloud_only)
    lines = [
        f"Logs (JSON lines): {home / DEMO_LOG}",
        "",
        "Look around (run `source .venv/bin/activate` first if `coexist` is not on your PATH):",
        f"  export COEXIST_HOME={h}",
        "  coexist cutover history",
        "  coexist dlq list --status all",
        "  coexist status",
        "  coexist console    # the cutover console on http://127.0.0.1:8090/ "
        "(or rerun the demo with --keep)",
    ]
    if key is not None:
        what = "a stray write, reported and repaired" if stray else "edited by a person"
        lines.append(f"  coexist trace customer:{key}    # {what}")
    edi = getattr(scenario, "edi", None)
    if edi is not None and edi.orders:
        first, last = edi.orders[0], edi.orders[-1]
        lines += [
            f"  coexist trace order:{first.key}    # by EDI 850 before the order domain "
            f"moved ({first.sor}): its 850, 997, 855, 856, 810",
            f"  coexist trace order:{last.key}    # by EDI 850 after the move ({last.sor})",
            "  coexist edi status    # 997s we wait for (the demo partner sends none back)",
            f"  ls {quote(str(home / 'edi'))}/*/outbound",
        ]
    portal = getattr(scenario, "portal", None)
    if portal is not None and portal.orders:
        lines += ["  coexist portal endpoint list",
                  f"  coexist trace order:{portal.orders[0].order_key}    # a portal order: "
                  "the API call, its webhooks and their attempts"]
    onboarded = getattr(getattr(scenario, "crm", None), "onboarded", None)
    if onboarded:
        lines.append(f"  coexist trace customer:{onboarded[0]}    # typed into the CRM by a "
                     "person, created in the SoR")
    lines += [
        "",
        "Reconcile the demo's two ERPs yourself (the cloud simulator keeps its file):",
        f"  coexist cloud-sim --db {quote(str(home / 'cloud.db'))} --port 8099 &",
        "  COEXIST_CLOUD_URL=http://127.0.0.1:8099 coexist reconcile --output findings.jsonl",
    ]
    if after:
        domains = sorted({d for d, _ in after})
        lines += [
            f"Expect drift there, and exit 1: after cloud_only the legacy ERP is no longer "
            f"written, and people then edited {len(after)} record(s) in the cloud "
            f"({', '.join(domains)}). Those show as mismatches: the legacy ERP is retired "
            "for these domains, not broken.",
        ]
    return lines
