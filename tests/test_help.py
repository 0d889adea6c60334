"""Every command explains itself with an example, and the README documents every command."""

from __future__ import annotations

import subprocess
import sys

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


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0
    assert "Example: dialer " + " ".join(path) in result.output


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_command_is_in_the_readme(path):
    assert f"dialer {' '.join(path)}" in (ROOT / "README.md").read_text()


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
