"""``coexist demo``: a phased cutover of every domain on the embedded default.

No RabbitMQ, Redis or PostgreSQL: coexist's state, the embedded broker and the
legacy reference ERP are SQLite files under ``--home``; the cloud ERP simulator
runs as a subprocess on a free loopback port with its own SQLite file.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from bus.context import configure_logging
from coexistence.sample import SampleSpec
from workers.config import Settings
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


@click.command("demo")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path), default=Path("var/demo"),
              show_default=True, help="Folder for the demo's SQLite files (emptied first).")
@click.option("--customers", type=click.IntRange(1, 100_000), default=40, show_default=True,
              help="Sample size; every other domain scales from it.")
@click.option("--changes", type=click.IntRange(1, 50), default=3, show_default=True,
              help="People's edits per domain per step.")
def demo(home: Path, customers: int, changes: int) -> None:
    """Seed the legacy ERP, start the cloud simulator, and cut every domain over:
    legacy -> shadow -> cloud -> cloud_only, with a rollback drill, while people keep
    editing both ERPs.  Prints how far the ERPs agree after every step."""
    from workers.bootstrap import bootstrap
    from workers.cloud_sim import start_simulator
    from workers.cloud_sim.admin import SimulatorAdmin
    from workers.driver import Driver
    from workers.legacy_erp.schema import create_legacy_engine, create_legacy_schema
    from workers.legacy_erp.seed import seed_legacy
    from workers.scenario import PhasedCutover, reconciler

    console = Console(width=None if Console().is_terminal else 110)
    home = home.resolve()
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    started = time.perf_counter()
    # The console shows the steps; every log line (JSON, with correlation ids) goes to a file.
    log_file = (home / "coexist.log").open("a")
    configure_logging("INFO", stream=log_file)

    legacy_url = f"sqlite:///{home / 'legacy.db'}"
    engine = create_legacy_engine(legacy_url)
    create_legacy_schema(engine)
    report = seed_legacy(engine, SampleSpec(customers=customers, products=max(20, customers // 2)))
    engine.dispose()
    counts = ", ".join(f"{d} {n}" for d, n in report.records.items())
    console.print(f"[bold]legacy ERP seeded[/] ({legacy_url}): {counts} "
                  f"({report.rows} rows in {report.seconds:.1f} s)")

    with start_simulator(home / "cloud.db") as sim:
        console.print(f"[bold]cloud ERP simulator[/] at {sim.url}")
        settings = Settings(
            home=home, state_url=f"sqlite:///{home / 'state.db'}", legacy_url=legacy_url,
            broker_url=None, queue_type="classic", redis_url=None, redis_prefix="coexist:",
            cloud_url=sim.url,
        )
        app = bootstrap(settings, create_state=True)
        driver = Driver(app)
        people = SimulatorAdmin(sim.url)
        steps = iter(range(1, 100))
        try:
            reports = PhasedCutover(
                driver, cloud_people=people.person_upsert, changes_per_domain=changes,
                report=lambda r: _print_step(console, next(steps), r), reconcile=reconciler(app),
            ).run()
        finally:
            people.close()
            driver.stop()

    disagreements = sum(1 for r in reports for a in r.agreements.values() if not a.agrees)
    elapsed = time.perf_counter() - started
    console.print(
        f"\n[bold]{'done' if not disagreements else 'DONE WITH DISAGREEMENTS'}[/] in "
        f"{elapsed:.1f} s: {len(reports)} steps, {disagreements} domain/step disagreements.\n"
        f"Logs (JSON lines): {home / 'coexist.log'}\n"
        f"Look around with COEXIST_HOME={home}:  coexist cutover history | "
        f"coexist dlq list --status all | coexist status | coexist trace customer:10003\n"
        f"Reconcile the demo's ERPs yourself (the cloud ERP keeps its file):\n"
        f"  python -m workers.cloud_sim --db {home / 'cloud.db'} --port 8099 &\n"
        f"  COEXIST_HOME={home} COEXIST_CLOUD_URL=http://127.0.0.1:8099 coexist reconcile "
        f"--output findings.jsonl"
    )
    log_file.close()
    if disagreements:
        raise SystemExit(1)
