"""Every command explains itself with an example, and the README documents every command."""

from __future__ import annotations

import re
import subprocess
import sys

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from dialer_cli.cli import app
from tests.conftest import ROOT

runner = CliRunner()


def command_paths(group=None, prefix=()):
    group = group or get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


COMMANDS = sorted(command_paths())
SHARED = {"--db", "--config", "--help"}  # one sentence in the README covers them for every command


def command_of(path):
    command = get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def long_names(command):
    """Every option's long name, and each argument's name, as `dialer COMMAND --help` shows it."""
    for param in command.params:
        if isinstance(param, click.Option):
            yield from (o for o in param.opts if o.startswith("--"))


def readme_rows(path):
    """The README command table's rows for one command (a row may name several commands)."""
    section = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `dialer")]
    mention = re.compile(rf"`dialer {re.escape(' '.join(path))}( |`)")
    return [row for row in rows if mention.search(row.split(" | ")[0])]


README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example: dialer " + " ".join(path) in result.output


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_is_in_the_readme(path):
    assert f"dialer {' '.join(path)}" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_and_argument_has_help_text(path):
    command = command_of(path)
    missing = [p.name for p in command.params if not getattr(p, "help", None)]
    assert missing == []
    shown = runner.invoke(app, [*path, "--help"]).output
    for param in command.params:
        assert " ".join(param.help.split()[:3]) in " ".join(shown.split())


def test_the_version_option_has_help_text():
    assert "--version Show the version" in " ".join(runner.invoke(app, ["--help"]).output.split())


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_is_in_the_readme_command_table(path):
    rows = readme_rows(path)
    assert rows, f"no row for dialer {' '.join(path)} in the README's command table"
    documented = " ".join(rows)
    missing = [o for o in long_names(command_of(path)) if o not in SHARED and o not in documented]
    assert missing == [], f"dialer {' '.join(path)}: {missing} not in its README table row"


def test_the_readme_says_every_command_takes_db_and_config():
    section = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    assert "`--db PATH`" in section and "`--config PATH`" in section


def test_help_lists_the_exit_codes_and_h_works():
    result = runner.invoke(app, ["-h"])
    assert result.exit_code == 0 and "130 interrupted twice" in result.output


def test_python_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "dialer_cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.startswith("dialer ")


def test_bad_option_is_a_usage_error():
    result = runner.invoke(app, ["start", "x.csv", "--concurrency", "0"])
    assert result.exit_code == 2
