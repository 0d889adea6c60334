"""What every command shares: the app, options, consoles, and the one-line error guard.

Exit codes (every command): 0 done · 1 runtime failure · 2 bad input or usage ·
3 stopped before done · 4 busy · 130 interrupted twice.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from dialer_cli import __version__
from dialer_cli.config import (
    Settings,
    default_db_path,
    load_settings,
)
from dialer_cli.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    DialerError,
)
from dialer_cli.store import Store

EXIT_CODES = (
    "Exit codes: 0 done · 1 runtime failure (Twilio account, database) · 2 bad input or usage · "
    "3 stopped before done · 4 busy (another process drives the run, or the source has an "
    "unfinished run) · 130 interrupted twice."
)

app = typer.Typer(
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"Call a list of leads through Twilio, never more than N at once.\n\n{EXIT_CODES}",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)

DbOption = Annotated[
    Path | None, typer.Option("--db", envvar="DIALER_DB", help="SQLite database file.")
]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", envvar="DIALER_CONFIG", help="YAML configuration file.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", help="Only errors and the final summary.")
]
ConcurrencyOption = Annotated[
    int | None,
    typer.Option(
        "--concurrency", "-n", min=1, help="Calls in flight at most (dialing.concurrency)."
    ),
]
MaskOption = Annotated[
    bool, typer.Option("--mask", help="Show numbers as +1 212 •••-••67 (screens, screenshots).")
]
NoWaitOption = Annotated[
    bool,
    typer.Option("--no-wait", help="Exit 3 instead of waiting for retries or calling hours."),
]
F = TypeVar("F", bound=Callable[..., Any])


def guarded(func: F) -> F:
    """Every failure becomes one line on stderr and its documented exit code; no tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except DialerError as exc:
            err.print(f"error: {exc}", markup=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; the run stays resumable", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except SystemExit as exc:
            raise typer.Exit(int(exc.code or 0)) from None
        except Exception as exc:  # noqa: BLE001 - the promise is: no traceback, ever
            if os.environ.get("DIALER_DEBUG"):
                raise
            err.print(
                f"internal error: {type(exc).__name__}: {exc}; set DIALER_DEBUG=1 for details",
                markup=False,
                soft_wrap=True,
            )
            raise typer.Exit(EXIT_FAILURE) from None

    return wrapper  # type: ignore[return-value]


def version_callback(value: bool) -> None:
    if value:
        import sqlite3

        out.print(f"dialer {__version__} (SQLite {sqlite3.sqlite_version})", markup=False)
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True)
    ] = False,
) -> None:
    """Call a list of leads through Twilio, never more than N at once."""


# -- shared plumbing ------------------------------------------------------------------------------


def settings_for(config: Path | None, **flags: object) -> Settings:
    return load_settings(config, os.environ, {k: v for k, v in flags.items() if v is not None})


def open_store(db: Path | None, readonly: bool = False) -> Store:
    return Store.open(db or default_db_path(), readonly=readonly)


class Interrupts:
    """First Ctrl-C or SIGTERM: dial nothing new and let calls finish. Second: leave now."""

    def __init__(self, notice: Callable[[], None]):
        self.count = 0
        self.notice = notice

    def handle(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count == 1:
            self.notice()
            return
        raise SystemExit(EXIT_INTERRUPTED)

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
