"""``coexist sample``: decodable JSON lines, deterministic bytes, clear errors."""

from __future__ import annotations

import json

from click.testing import CliRunner

from coexistence.canonical import DOMAINS, decode
from coexistence.sample import SampleSpec
from workers.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, ["sample", *args])


def test_every_line_is_one_decodable_record_and_every_domain_is_written_in_full():
    result = run("--customers", "6", "--seed", "2", "--products", "10")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    spec = SampleSpec(customers=6, seed=2, products=10)
    for domain in DOMAINS:
        records = [decode(d["domain"], d["record"]) for d in lines if d["domain"] == domain]
        assert records == list(spec.iter(domain))
    assert [d["domain"] for d in lines] == sorted(
        (d["domain"] for d in lines), key=DOMAINS.index
    )


def test_the_same_seed_and_scale_write_the_same_bytes_and_another_seed_does_not():
    a, b = run("--customers", "5", "--seed", "11"), run("--customers", "5", "--seed", "11")
    c = run("--customers", "5", "--seed", "12")
    assert a.stdout == b.stdout != c.stdout


def test_the_domain_option_writes_only_the_chosen_domains():
    result = run("--customers", "4", "--domain", "invoice", "--domain", "customer")
    domains = {json.loads(line)["domain"] for line in result.stdout.splitlines()}
    assert domains == {"customer", "invoice"}


def test_a_file_output_is_complete_and_leaves_no_partial_file(tmp_path):
    target = tmp_path / "sample.ndjson"
    result = run("--customers", "3", "--domain", "order", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert len(target.read_text(encoding="utf-8").splitlines()) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["sample.ndjson"]
    assert "wrote 9 records (order 9)" in result.stderr


def test_a_bad_scale_is_one_clear_line_and_exit_2():
    result = run("--customers", "3", "--products", "2", "--prices-per-customer", "5")
    assert result.exit_code == 2
    assert "prices_per_customer (5) cannot exceed products (2)" in result.output
    assert "Traceback" not in result.output


def test_an_unwritable_output_names_the_file_and_exits_2(tmp_path):
    target = tmp_path / "missing-dir" / "sample.ndjson"
    result = run("--customers", "1", "--output", str(target))
    assert result.exit_code == 2
    assert f"cannot write {target}" in result.output
