"""The commands the README tells people to type exist, with those options and values.

Every ``coexist ...`` in the README (fenced code blocks and inline code, the runbook's
included) is resolved against the real CLI: each subcommand exists, each ``--option``
belongs to the command, and a command line without placeholders parses (click's own
parser: choices such as domains and modes, types, option values).  A README that names a
command or option the CLI no longer has fails here."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from workers.cli import cli

README = Path(__file__).parents[2] / "README.md"
#: Words the README uses for "put your value here".
_PLACEHOLDER = re.compile(r"…|\.\.\.|<[^>]*>|^[A-Z][A-Z_]*$|^N$")


def _fenced(text: str) -> list[str]:
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            lines.append(line.split(" #", 1)[0])
    return lines


def _inline(text: str) -> list[str]:
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    spans = []
    for paragraph in re.split(r"\n\s*\n", prose):  # a code span never crosses one
        spans += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", paragraph)]
    return spans


def commands(text: str) -> list[str]:
    """Every ``coexist ...`` command line in ``text``, shell separators split."""
    out = []
    for line in _fenced(text) + _inline(text):
        line = re.sub(r"<[^>]*>", "VALUE", line)  # `<correlation id | domain:key>`
        for part in re.split(r"&&|\|\||[|;]", line):
            part = part.strip()
            if re.match(r"^'?coexist\[", part):  # a pip extra (`coexist[sftp]`), not a command
                continue
            part = part.replace("[", " ").replace("]", " ")
            if re.match(r"^([\w.-]*/)*coexist(\s|$)", part):  # coexist, .venv/bin/coexist
                out.append(part)
    return out


def _resolve(args: list[str]) -> tuple[list[str], click.Command, list[str]]:
    """(path of command names, the command, the arguments left for it)."""
    command: click.Command = cli
    path: list[str] = []
    rest = list(args)
    ctx = click.Context(cli)
    while isinstance(command, click.Group) and rest:
        head = rest[0]
        if head.startswith("-"):
            param = _option_of(command, head)
            if param is None:
                break  # reported by ``problem``
            rest.pop(0)
            if param is not None and not param.is_flag and "=" not in head and rest:
                rest.pop(0)
            continue
        sub = command.get_command(ctx, head)
        if sub is None:
            break
        path.append(head)
        command = sub
        rest.pop(0)
    return path, command, rest


def _option_of(command: click.Command, token: str) -> click.Option | None:
    name = token.split("=", 1)[0]
    if name == "--help":
        return click.Option(["--help"], is_flag=True)
    for param in command.params:
        if isinstance(param, click.Option) and name in (*param.opts, *param.secondary_opts):
            return param
    return None


TEXT = README.read_text()
COMMANDS = commands(TEXT)


def test_the_readme_names_commands_at_all():
    # The extraction works: the quick start and every runbook step are found.
    found = {" ".join(_resolve(shlex.split(c)[1:])[0]) for c in COMMANDS}
    assert {"status", "config show", "doctor", "reconcile", "cutover plan", "cutover set",
            "cutover status", "cutover rollback", "dlq list", "trace", "cutover history",
            "cloud-sim"} <= found, sorted(found)


def problem(line: str) -> str | None:
    """What is wrong with README command ``line`` (``None``: it holds)."""
    args = shlex.split(line)[1:]
    path, command, rest = _resolve(args)
    where = f"coexist {' '.join(path)}".strip()
    if isinstance(command, click.Group):
        # ``coexist dlq`` named as a group, or a word the group does not have.
        if rest and not rest[0].startswith("-") and not _PLACEHOLDER.search(rest[0]):
            return f"{where} has no command {rest[0]!r}"
        return None
    for token in rest:
        if token.startswith("--") and not _option_of(command, token):
            return f"{where} has no option {token.split('=')[0]}"
    if any(_PLACEHOLDER.search(t) for t in rest):
        return None
    try:
        command.make_context(where, rest)
    except click.MissingParameter:
        pass  # prose may leave out a required option it names elsewhere (--reason)
    except click.UsageError as exc:
        return exc.format_message()
    return None


@pytest.mark.parametrize("line", sorted(set(COMMANDS)))
def test_a_readme_command_exists_with_its_options(line):
    assert problem(line) is None, f"README: `{line}`: {problem(line)}"


def test_the_check_fails_on_what_the_cli_does_not_have():
    assert problem("coexist status --nope") == "coexist status has no option --nope"
    assert problem("coexist nosuch") == "coexist has no command 'nosuch'"
    assert "yaml" in (problem("coexist status --format yaml") or "")
    assert problem("coexist cutover plan customer shadow") is None


def _section(title_prefix: str) -> str:
    match = re.search(rf"^## {re.escape(title_prefix)}.*?(?=^## )", TEXT, flags=re.S | re.M)
    assert match, f"README has no section '## {title_prefix}...'"
    return match.group(0)


def test_the_readme_says_to_activate_the_venv_before_using_coexist():
    # Issue 11: after the demo `coexist` was "command not found".
    fenced = "\n".join(_fenced(TEXT))
    assert "source .venv/bin/activate" in fenced
    before = fenced.index("source .venv/bin/activate")
    assert re.search(r"^coexist ", fenced[before:], flags=re.M)
    # The simulator is a coexist subcommand, not a module to run by hand.
    assert "python -m workers.cloud_sim" not in TEXT


def test_the_runbook_walks_one_cutover_step_in_order():
    runbook = _section("Runbook")
    steps = re.findall(r"^\d+\. \*\*(\w[\w ]*)\*\*", runbook, flags=re.M)
    want = ["Start", "Reconcile", "Backfill", "Wait", "Plan", "Set", "Watch", "Roll back"]
    assert [s for s in steps if s in want] == want, steps
    for command in ("coexist db upgrade", "coexist reconcile customer --repair --yes",
                    "coexist cutover plan customer shadow", "coexist cutover set customer",
                    "coexist cutover status customer", "coexist cutover rollback customer"):
        assert command in " ".join(runbook.split()), command
    # PostgreSQL schemas are made by `coexist db upgrade`, never by a process's start.
    start = runbook[runbook.index("**Start**"):runbook.index("**Reconcile**")]
    assert "coexist db upgrade" in start and "creates coexist's state tables" not in start
