"""The `dialer` command: flags in, one core call, a view out.

Exit codes (every command): 0 done · 1 runtime failure · 2 bad input or usage ·
3 stopped before done · 4 busy · 130 interrupted twice.
"""

# isort: off
# Importing the modules registers their commands, in the order `dialer --help` lists them.
from dialer_cli.cli.common import app
from dialer_cli.cli import run, views, admin  # noqa: F401
# isort: on


def main() -> None:
    app()


__all__ = ["app", "main"]
