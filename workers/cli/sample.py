"""``coexist sample``: write the deterministic sample distributor data as JSON lines."""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

import click

from coexistence.canonical import DOMAINS
from coexistence.sample import SampleSpec
from workers.cli.common import UserError


def write_ndjson(spec: SampleSpec, domains: tuple[str, ...], out: TextIO) -> Counter:
    """Stream ``domains`` of ``spec`` to ``out``, one ``{"domain", "record"}`` object a line."""
    counts: Counter = Counter()
    for domain in domains:
        prefix = f'{{"domain":"{domain}","record":'
        for record in spec.iter(domain):
            out.write(prefix + record.model_dump_json() + "}\n")
            counts[domain] += 1
    return counts


@click.command("sample")
@click.option("--customers", type=int, required=True, help="Number of customers.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same seed and scale, same bytes.")
@click.option("--products", type=int, default=100, show_default=True)
@click.option("--warehouses", type=int, default=3, show_default=True)
@click.option("--prices-per-customer", type=int, default=2, show_default=True,
              help="Contract price agreements per customer, on distinct products.")
@click.option("--orders-per-customer", type=int, default=3, show_default=True)
@click.option("--max-order-lines", type=int, default=4, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["ndjson"]), default="ndjson",
              show_default=True, help="Output format: one JSON object per line.")
@click.option("--domain", "domains", type=click.Choice(DOMAINS), multiple=True,
              help="Only this domain (repeatable). Default: all, in dependency order.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="File to write (replaced atomically). Default: standard output.")
def sample(
    customers: int, seed: int, products: int, warehouses: int, prices_per_customer: int,
    orders_per_customer: int, max_order_lines: int, fmt: str, domains: tuple[str, ...],
    output: Path | None,
) -> None:
    """Write the sample distributor's canonical records as JSON lines.

    Each line is {"domain": ..., "record": {...canonical record...}}; decode a
    record with coexistence.canonical.decode(domain, record).  Records are
    generated one at a time, so memory stays flat at any scale; the same seed
    and scale always give the same bytes.  Orders cover every status, shipments
    every milestone stage, invoices every status (from 16 orders up).
    """
    try:
        spec = SampleSpec(
            customers=customers, seed=seed, products=products, warehouses=warehouses,
            prices_per_customer=prices_per_customer, orders_per_customer=orders_per_customer,
            max_order_lines=max_order_lines,
        )
    except ValueError as exc:
        raise UserError(f"bad sample scale: {exc}") from None
    chosen = tuple(d for d in DOMAINS if d in domains) if domains else DOMAINS
    started = time.perf_counter()
    if output is None:
        try:
            counts = write_ndjson(spec, chosen, sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader (head, less) left: stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
    else:
        counts = _write_file(spec, chosen, output)
    summary = ", ".join(f"{d} {counts[d]}" for d in chosen)
    where = str(output) if output else "standard output"
    click.echo(
        f"wrote {sum(counts.values())} records ({summary}) to {where} "
        f"in {time.perf_counter() - started:.1f} s",
        err=True,
    )


def _write_file(spec: SampleSpec, domains: tuple[str, ...], output: Path) -> Counter:
    # Write beside the target and rename, so an interrupted run never leaves a
    # truncated file that looks complete.
    partial = output.with_name(output.name + ".partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="\n") as out:
            counts = write_ndjson(spec, domains, out)
        os.replace(partial, output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return counts
