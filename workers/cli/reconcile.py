"""``coexist reconcile [DOMAIN ...]``: field-level drift between the legacy and the cloud ERP."""

from __future__ import annotations

import csv
import json
import sys
import time
from contextlib import ExitStack

import click
import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from bus.errors import BusError
from coexistence.canonical import DOMAINS
from coexistence.errors import CoexistError
from coexistence.reconcile.engine import UnsortedStream
from coexistence.reconcile.findings import Finding, Kind, Report
from workers.cli.common import UserError, hard_deadline
from workers.config import redact_url

#: Findings kept in memory per domain for the store, the printout and repairs.
KEEP_FINDINGS_MAX = 100_000
#: Findings printed under the summary table when no --limit is given.
PRINT_FINDINGS_DEFAULT = 20

SUMMARY_COLUMNS = ("domain", "rows_legacy", "rows_cloud", "exclusive_legacy", "exclusive_cloud",
                   "mismatched", "unchanged", "duplicates", "orphans", "key_mismatches",
                   "untranslatable", "findings", "drift_pct", "mode", "status")


@click.command("reconcile")
@click.argument("domains", nargs=-1, metavar="[DOMAIN ...]")
@click.option("--max-drift", type=click.FloatRange(min=0, max=100), default=None,
              help="Largest acceptable drift in percent; above it exit 1 "
                   "(default COEXIST_MAX_DRIFT_PCT, the limit the cutover guard and "
                   "`status` use).")
@click.option("--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the findings as JSON lines to this file.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table",
              show_default=True, help="Format of the summary on stdout.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="Keep at most N findings per domain (output, store, repairs); "
                   "the counts stay complete.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="S", help="Give up after S seconds, even on a hung cloud ERP (exit 2; "
                                "the run is stored as timed out).")
@click.option("--mode", type=click.Choice(["auto", "index", "checksum", "full"]),
              default="auto", show_default=True,
              help="auto/index: compare coexist's digest indexes of both ERPs and verify "
                   "only what differs (and a sample) live; the first run (cold) streams "
                   "both in full and builds the indexes.  checksum: the simulator's "
                   "segment checksums.  full: stream both ERPs.")
@click.option("--deep", "--rebuild-index", "deep", is_flag=True,
              help="Stream both ERPs in full and rebuild the digest indexes from them: "
                   "sees writes that bypassed capture (a TRUNCATE, a disabled trigger).")
@click.option("--sample", type=click.IntRange(min=0), default=None, metavar="N",
              help="Index mode: records per side verified live beyond the suspects "
                   "(default 200).")
@click.option("--repair", is_flag=True,
              help="Re-publish the system of record's version of the findings through the "
                   "outbox (dry run unless --yes).")
@click.option("--yes", is_flag=True, help="With --repair: enqueue the repairs.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar (default: when stderr is a terminal).")
@click.option("--legacy-url", default=None, metavar="URL",
              help="Legacy database (default COEXIST_LEGACY_URL).")
@click.option("--cloud-url", default=None, metavar="URL",
              help="Cloud ERP API (default COEXIST_CLOUD_URL).")
@click.option("--state-url", default=None, metavar="URL",
              help="coexist's state database (default COEXIST_STATE_URL).")
@click.pass_obj
def reconcile(app, domains, max_drift, output, fmt, limit, timeout, mode, deep, sample, repair,
              yes, progress, legacy_url, cloud_url, state_url) -> None:
    """Compare the legacy and the cloud ERP record by record and field by field.

    Both sides are brought into one canonical form through the translators; the
    legacy ERP's documented normalisation (upper-case, truncation, rounding,
    status folds) is applied to the cloud side too and named in the report as a
    tolerance.  Records match by key (xref) and, where no xref exists, by
    natural key.  Findings: missing in cloud, missing in legacy, field
    mismatches (with the field's owner), duplicates by natural key, orphan
    xrefs.  Every run is stored in the state database (the cutover guards read
    the last drift).

    Exit code: 0 drift within --max-drift, 1 above it, 2 bad input, no state or
    legacy database, or an unreachable system, 130 interrupted (the run is stored
    as interrupted, never as drift).

    --repair re-publishes the system of record's record (from the cutover
    flags: legacy in legacy/shadow mode, cloud in cloud/cloud_only) to the other
    ERP through the outbox: audited and version-checked like any routed write.
    In cloud_only this is the backfill of the legacy ERP that a rollback needs
    (`coexist reconcile DOMAIN --repair --yes`), although cloud_only writes no
    legacy record otherwise.  Without --yes it only prints what it would do.
    """
    for domain in domains:
        if domain not in DOMAINS:
            raise UserError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
    if yes and not repair:
        raise UserError("--yes confirms --repair; add --repair")
    overrides = {k: v for k, v in (("legacy_url", legacy_url), ("cloud_url", cloud_url),
                                   ("state_url", state_url)) if v}
    if overrides:
        app = app.with_settings(**overrides)
    if max_drift is None:
        max_drift = app.settings.max_drift_pct
    # The backfill's plain progress lines are on unless asked off (--no-progress).
    backfill_lines = progress is None and not sys.stderr.isatty()
    if progress is None:
        progress = sys.stderr.isatty()
    deadline = time.monotonic() + timeout if timeout else None
    try:
        with ExitStack() as stack:
            ctx = _open(app, stack, timeout)
            out = stack.enter_context(open(output, "w", encoding="utf-8")) if output else None
            results = []
            for domain in domains or DOMAINS:
                results.append(_one(ctx, domain, max_drift, limit, mode, progress, deadline,
                                    out, timeout, repair, yes, fmt, deep, sample,
                                    backfill_lines))
    finally:
        if overrides:
            app.close()
    _print(results, fmt, limit)
    if any(r[0].counts.drift_pct > max_drift for r in results):
        sys.exit(1)


class _Context:
    def __init__(self, legacy, cloud, state, xref, runs, app):
        self.legacy, self.cloud, self.state = legacy, cloud, state
        self.xref, self.runs, self.app = xref, runs, app


def _open(app, stack: ExitStack, timeout: float | None) -> _Context:
    from workers.cloud_erp import CLOUD_TIMEOUT_S
    from workers.reconcile.cloud import CloudReader
    from workers.reconcile.legacy import LegacyReader
    from workers.reconcile.store import RunStore
    from workers.xref_sql import SqlXref

    legacy = app.legacy
    state = app.state
    # Reconciliation reads in bulk: a failing cloud is reported, not retried for minutes.
    # With --timeout the run's own deadline (``hard_deadline``) ends it, even inside a
    # request that hangs; requests time out a little later so that the deadline, not a
    # request, says what happened.
    request_s = CLOUD_TIMEOUT_S if timeout is None else min(CLOUD_TIMEOUT_S, timeout + 1)
    cloud_erp = app.cloud_client(attempts=2, base_backoff_s=0.2, timeout_s=request_s)
    stack.callback(cloud_erp.close)
    try:
        cloud_erp.http.get("/health")
    except httpx.HTTPError as exc:
        raise UserError(f"cloud ERP (COEXIST_CLOUD_URL={redact_url(app.settings.cloud_url)}) "
                        f"unreachable: {type(exc).__name__}: {exc}") from None
    return _Context(LegacyReader(legacy), CloudReader(cloud_erp, **(
        {"segments_timeout_s": request_s} if timeout else {})), state,
                    SqlXref(state), RunStore(state), app)


def _one(ctx: _Context, domain, max_drift, limit, mode, progress, deadline, out, timeout,
         repair, yes, fmt="table", deep=False, sample=None, backfill_lines=False,
         ) -> tuple[Report, str, list[Finding], dict | None]:
    from workers.reconcile.cloud import CloudUnavailable
    from workers.reconcile.runner import ChecksumsUnavailable, ReconcileTimeout

    keep_max = KEEP_FINDINGS_MAX if limit is None else min(limit, KEEP_FINDINGS_MAX)
    kept: list[Finding] = []
    written = [0]
    # Records of key mismatches: the backfill leaves them alone, whatever --limit keeps
    # (duplicates within one side are copied as they are, and reported).
    unrepairable: set[str] = set()

    def on_finding(f: Finding) -> None:
        if repair and f.kind == Kind.KEY_MISMATCH:
            # One record under two numbers: creating either side's would duplicate it.
            unrepairable.update(k for k in (f.key, f.cloud_key) if k)
        if limit is not None and written[0] >= limit:
            return
        written[0] += 1
        if out is not None:
            out.write(json.dumps(f.to_dict(), ensure_ascii=False) + "\n")
        if len(kept) < keep_max:
            kept.append(f)

    run_id = ctx.runs.start(domain, max_drift)
    if repair and yes and mode != "checksum":
        filled = _fill_empty(ctx, domain, run_id, max_drift, on_finding, progress,
                             backfill_lines, fmt != "table", deadline, timeout)
        if filled is not None:
            report, status, backfilled = filled
            ctx.runs.add_findings(run_id, kept)
            return report, status, kept, backfilled
    try:
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise ReconcileTimeout(domain)
        with hard_deadline(remaining, lambda: ReconcileTimeout(domain)), \
                _progress_bar(progress, domain) as tick:
            report = _compare(ctx, domain, mode, deep, sample, on_finding, tick, deadline)
    except ReconcileTimeout:
        ctx.runs.fail(run_id, "timeout", f"timed out after {timeout} s")
        raise UserError(f"reconcile {domain}: timed out after {timeout:g} s") from None
    except KeyboardInterrupt:
        ctx.runs.fail(run_id, "interrupted", "interrupted (Ctrl-C)")
        raise
    except (CoexistError, UnsortedStream, ChecksumsUnavailable) as exc:
        # Caught before BusError (CoexistError is one): bad data that escaped the
        # per-record findings, or a side that breaks the sort contract, is not the
        # cloud's fault.
        ctx.runs.fail(run_id, "failed", str(exc))
        raise UserError(f"reconcile {domain}: {exc}") from None
    except (CloudUnavailable, BusError, httpx.HTTPError) as exc:
        ctx.runs.fail(run_id, "failed", str(exc))
        raise UserError(f"reconcile {domain}: cloud ERP: {exc}") from None
    except SQLAlchemyError as exc:
        ctx.runs.fail(run_id, "failed", str(getattr(exc, "orig", exc)))
        raise UserError(f"reconcile {domain}: legacy database: "
                        f"{getattr(exc, 'orig', exc)}") from None
    except Exception as exc:
        # Anything else still ends the run as failed (never left 'running', which would
        # let the guards fall back on an older good run) and says so in one line.
        reason = f"{type(exc).__name__}: {exc}"
        ctx.runs.fail(run_id, "failed", reason)
        raise UserError(f"reconcile {domain}: failed: {reason}") from None
    status = "drift" if report.counts.drift_pct > max_drift else "ok"
    ctx.runs.finish(run_id, report, status)
    ctx.runs.add_findings(run_id, kept)
    backfilled = None
    if repair and not yes:
        # With --format json/csv stdout is the summary alone: what repair says goes to stderr.
        _repair(ctx, domain, kept, run_id, yes, report.counts.findings > len(kept),
                err=fmt != "table")
    elif repair and (report.counts.exclusive_legacy or report.counts.exclusive_cloud
                     or report.counts.mismatched):
        # Only something a write can fix is worth streaming both ERPs again for.
        total = max(report.counts.rows_legacy, report.counts.rows_cloud)
        _, backfilled = _backfill(ctx, domain, run_id, unrepairable, total, progress,
                                  backfill_lines, fmt != "table", deadline, timeout)
    return report, status, kept, backfilled


def _fill_empty(ctx: _Context, domain: str, run_id: str, max_drift: float, on_finding,
                progress: bool, lines: bool, err: bool, deadline: float | None,
                timeout: float | None) -> tuple[Report, str, dict] | None:
    """``--repair --yes`` when one ERP holds nothing of ``domain`` (beyond the backfill
    checkpoint): no reconciliation first; the backfill reconciles what it streams
    (``workers.reconcile.backfill_empty``) and the run stores that.  ``None``: both
    ERPs hold records (compare first)."""
    from workers.reconcile.backfill_empty import empty_side, source_rows

    try:
        with _backfill_errors(domain, timeout):
            empty = empty_side(ctx.legacy, ctx.cloud, ctx.state, domain)
        if empty is None:
            return None
        run, backfilled = _backfill(ctx, domain, run_id, (), source_rows(ctx.legacy, domain,
                                                                          empty),
                                    progress, lines, err, deadline, timeout, empty=empty,
                                    on_finding=on_finding)
    except KeyboardInterrupt:
        ctx.runs.fail(run_id, "interrupted", "interrupted (Ctrl-C)")
        raise
    except UserError as exc:
        ctx.runs.fail(run_id, getattr(exc, "run_status", "failed"), str(exc))
        raise
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        ctx.runs.fail(run_id, "failed", reason)
        raise UserError(f"backfill {domain}: failed: {reason}") from None
    report = run.reconciled
    status = "drift" if report.counts.drift_pct > max_drift else "ok"
    ctx.runs.finish(run_id, report, status)
    return report, status, backfilled


class _backfill_errors:
    """A backfill's failures as one line each (``UserError``); what it wrote stays
    committed, so each says that a rerun resumes."""

    def __init__(self, domain: str, timeout: float | None) -> None:
        self.domain, self.timeout = domain, timeout

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        from workers.reconcile.backfill import BackfillTimeout
        from workers.reconcile.cloud import CloudUnavailable

        domain = self.domain
        if exc is None:
            return False
        if isinstance(exc, BackfillTimeout):
            error = UserError(f"backfill {domain}: timed out after {self.timeout:g} s "
                              "(what it wrote is committed; run again to resume)")
            error.run_status = "timeout"  # type: ignore[attr-defined]
        elif isinstance(exc, CoexistError | UnsortedStream):
            error = UserError(f"backfill {domain}: {exc} (run again to resume)")
        elif isinstance(exc, CloudUnavailable | BusError | httpx.HTTPError):
            error = UserError(f"backfill {domain}: cloud ERP: {exc} (run again to resume)")
        elif isinstance(exc, SQLAlchemyError):
            error = UserError(f"backfill {domain}: database: {getattr(exc, 'orig', exc)} "
                              "(run again to resume)")
        else:
            return False
        raise error from None


def _backfill(ctx: _Context, domain: str, run_id: str, unrepairable, total: int | None,
              progress: bool, lines: bool, err: bool, deadline: float | None = None,
              timeout: float | None = None, *, empty: str | None = None,
              on_finding=None) -> tuple:
    """``--repair --yes``: the streaming, resumable backfill of what differs
    (``workers.reconcile.backfill``); a second Ctrl-C or a kill -9 loses nothing.
    ``--timeout`` covers it too: at the deadline it stops taking records, commits
    what it wrote and exits 2 (a rerun resumes).  ``empty``: that ERP holds nothing
    and the run reconciles as it goes (``backfill_empty.IntoEmpty``, findings to
    ``on_finding``).  Returns the run and its report's dict."""
    from coexistence.flags import FlagSource
    from workers.flags import FlagAuditLog
    from workers.reconcile.backfill import Backfill, ProgressLines
    from workers.reconcile.backfill_empty import IntoEmpty

    flags = FlagSource(FlagAuditLog(ctx.state).latest())
    with _backfill_bar(progress, domain) as bar:
        tick = bar if bar is not None else (ProgressLines(domain) if lines else None)
        kwargs = {"run_id": run_id, "skip_keys": unrepairable, "progress": tick,
                  "total": total, "deadline": deadline}
        if empty is None:
            run = Backfill(domain, ctx.legacy, ctx.cloud, ctx.state, flags, **kwargs)
        else:
            run = IntoEmpty(domain, ctx.legacy, ctx.cloud, ctx.state, flags, empty=empty,
                            on_finding=on_finding, **kwargs)
        with _backfill_errors(domain, timeout):
            done = run.run()
    click.echo(done.describe(), err=err)
    for line in done.errors:
        click.echo(f"  {line}", err=True)
    return run, done.to_dict()


def _rate_column_class():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:,.0f}/s" if task.speed else "")
    return RateColumn


def _RateColumn():  # noqa: N802 - a column, built lazily (rich is imported on use)
    return _rate_column_class()()


class _backfill_bar:
    """A rich bar with done/total, rate and ETA on stderr (a terminal), or nothing."""

    def __init__(self, enabled: bool, domain: str) -> None:
        self.enabled, self.domain = enabled, domain

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TaskProgressColumn(),
                                 _RateColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)
        self.progress.start()
        task = self.progress.add_task(f"backfill {self.domain}", total=None)

        def tick(done: int, written: int, total: int | None) -> None:
            self.progress.update(task, completed=done, total=total,
                                 description=f"backfill {self.domain} ({written:,} written)")
        return tick

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


def _compare(ctx: _Context, domain, mode, deep, sample, on_finding, tick, deadline) -> Report:
    from workers.reconcile import index
    from workers.reconcile.by_index import SAMPLE_RECORDS, reconcile_by_index
    from workers.reconcile.runner import reconcile_domain

    if not deep and mode in ("auto", "index") and index.built(ctx.state, domain):
        report, _ = reconcile_by_index(
            domain, ctx.legacy, ctx.cloud, ctx.state, on_finding=on_finding,
            sample=SAMPLE_RECORDS if sample is None else sample, deadline=deadline)
        return report
    rebuild = ctx.state if deep or mode in ("auto", "index") else None
    return reconcile_domain(domain, ctx.legacy, ctx.cloud, xref=ctx.xref.entries(domain),
                            mode=mode if rebuild is None else "full", on_finding=on_finding,
                            progress=tick, deadline=deadline, rebuild_index=rebuild)


def _repair(ctx: _Context, domain: str, findings: list[Finding], run_id: str, yes: bool,
            truncated: bool, err: bool = False) -> None:
    from coexistence.flags import FlagSource
    from workers.flags import FlagAuditLog
    from workers.reconcile.repair import enqueue, plan_repairs

    # The SQL audit is the truth: no Redis needed to know each domain's SoR.
    flags = FlagSource(FlagAuditLog(ctx.state).latest())
    readers = {"legacy": ctx.legacy, "cloud": ctx.cloud}
    plans, skipped = plan_repairs(findings, flags, readers)
    for f in skipped:
        click.echo(f"not repairable: {domain} {f.key}: {f.kind} ({f.detail or ''})", err=True)
    if truncated:
        click.echo(f"{domain}: only the first {len(findings)} findings are repaired "
                   "(raise --limit or run again)", err=True)
    if not yes:
        for plan, _ in plans:
            click.echo(f"would repair: {plan.describe()}", err=err)
        click.echo(f"{domain}: {len(plans)} repairs planned; add --yes to enqueue them",
                   err=err)
        return
    n = enqueue(ctx.state, plans, run_id)
    click.echo(f"{domain}: {n} repairs enqueued in the outbox (run {run_id})", err=err)


class _progress_bar:
    """A rich progress bar on stderr counting legacy records, or nothing."""

    def __init__(self, enabled: bool, domain: str) -> None:
        self.enabled, self.domain = enabled, domain

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:,} records"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
        self.progress.start()
        task = self.progress.add_task(f"reconcile {self.domain}", total=None)
        return lambda n: self.progress.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()


def _summary(report: Report, status: str) -> dict:
    c = report.counts
    return {"domain": report.domain, **{k: v for k, v in c.to_dict().items()},
            "mode": report.mode + ("+full" if report.fell_back else ""), "status": status,
            "segments": report.segments, "segments_differing": report.segments_differing,
            "cloud_records_fetched": report.cloud_records_fetched,
            "tolerances": list(report.tolerances)}


def _print(results, fmt: str, limit: int | None) -> None:
    summaries = [_summary(r, s) for r, s, _, _ in results]
    for summary, (*_, backfilled) in zip(summaries, results, strict=True):
        if backfilled is not None and fmt == "json":
            summary["backfill"] = backfilled
    if fmt == "json":
        click.echo(json.dumps({"runs": summaries, "findings": [
            f.to_dict() for _, _, kept, _ in results for f in kept]}, ensure_ascii=False))
        return
    if fmt == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(SUMMARY_COLUMNS)
        for s in summaries:
            writer.writerow([s[c] for c in SUMMARY_COLUMNS])
        return
    console = Console()
    table = Table(title="reconciliation")
    for col in ("domain", "legacy", "cloud", "only legacy", "only cloud", "mismatched",
                "unchanged", "dupl.", "orphans", "drift %", "mode"):
        table.add_column(col, justify="left" if col in ("domain", "mode") else "right")
    for s in summaries:
        table.add_row(s["domain"], f"{s['rows_legacy']:,}", f"{s['rows_cloud']:,}",
                      f"{s['exclusive_legacy']:,}", f"{s['exclusive_cloud']:,}",
                      f"{s['mismatched']:,}", f"{s['unchanged']:,}", f"{s['duplicates']:,}",
                      f"{s['orphans']:,}", f"{s['drift_pct']:.3f}", s["mode"])
    console.print(table)
    for r, _, _, _ in results:
        console.print(f"[dim]{r.domain} tolerances: {'; '.join(r.tolerances)}[/dim]",
                      highlight=False)
    shown = PRINT_FINDINGS_DEFAULT if limit is None else limit
    findings = [f for _, _, kept, _ in results for f in kept][:shown]
    if findings:
        ft = Table(title=f"findings (first {len(findings)})")
        for col in ("kind", "domain", "key", "field", "legacy", "cloud", "owner / detail"):
            ft.add_column(col)
        for f in findings:
            ft.add_row(str(f.kind), f.domain, f.key, f.field or "",
                       _short(f.legacy), _short(f.cloud),
                       f.owner or f.detail or (f.cloud_key and f"cloud key {f.cloud_key}") or "")
        console.print(ft)


def _short(value) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
