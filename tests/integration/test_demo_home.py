"""``coexist demo --home DIR`` never deletes what it did not make."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from workers.cli import cli
from workers.cli.common import UserError
from workers.cli.demo import DEMO_MARKER, prepare_home


def test_a_folder_with_other_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "thesis.tex").write_text("three years of work")
    (tmp_path / "state.db").write_text("someone else's database")
    with pytest.raises(UserError, match="is not empty and is not a demo home"):
        prepare_home(tmp_path)
    assert (tmp_path / "thesis.tex").read_text() == "three years of work"
    assert (tmp_path / "state.db").read_text() == "someone else's database"
    result = CliRunner().invoke(cli, ["demo", "--home", str(tmp_path), "--customers", "1"])
    assert result.exit_code == 2 and "Nothing was deleted" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.db", "thesis.tex"]


def test_a_demo_home_is_emptied_of_the_demos_files_only(tmp_path):
    home = tmp_path / "demo"
    prepare_home(home)  # a new folder becomes a demo home
    assert (home / DEMO_MARKER).is_file()
    for name in ("state.db", "state.db-wal", "bus.db", "legacy.db", "cloud.db", "coexist.log"):
        (home / name).write_text("from the last demo")
    (home / "notes.txt").write_text("mine")
    prepare_home(home)
    assert sorted(p.name for p in home.iterdir()) == [DEMO_MARKER, "notes.txt"]


def test_an_empty_folder_is_fine(tmp_path):
    prepare_home(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [DEMO_MARKER]
