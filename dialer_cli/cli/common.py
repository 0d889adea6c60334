"""What every command shares: the app, options, consoles, and the one-line error guard.

Exit codes (every command): 0 done · 1 runtime failure · 2 bad input or usage ·
3 stopped before done · 4 busy · 130 interrupted twice.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand
from typer.models import ArgumentInfo
from typer.utils import get_params_from_function

from dialer_cli import __version__
from dialer_cli.config import (
    Settings,
    default_db_path,
    load_settings,
)
from dialer_cli.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    DialerError,
    InputError,
)
from dialer_cli.store import Store

EXIT_CODES = (
    "Exit codes: 0 done · 1 runtime failure (Twilio account, database) · 2 bad input or usage · "
    "3 stopped before done · 4 busy (another process drives the run, or the source has an "
    "unfinished run) · 130 interrupted twice."
)


class Command(TyperCommand):
    """Typer 0.25 on Click 8.5 loses an argument's help (Click's Argument now takes `help` and
    resets it to None after Typer set it): put it back from the function's signature."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        declared = get_params_from_function(self.callback) if self.callback else {}
        for param in self.params:
            meta = declared.get(param.name or "")
            info = getattr(meta, "default", None)
            if isinstance(param, TyperArgument) and isinstance(info, ArgumentInfo):
                param.help = info.help


class App(typer.Typer):
    """`typer.Typer` whose commands show their arguments' help."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = App(
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"Call a list of leads through Twilio, never more than N at once.\n\n{EXIT_CODES}",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class _Console(Console):
    """A Rich console whose closed pipe reaches `guarded` (Rich's own handler exits 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


err = _Console(stderr=True, highlight=False, soft_wrap=True)
out = _Console(highlight=False)
PIPED_WIDTH = 1000  # piped tables are as wide as their contents: nothing cut to fit 80 columns


def table_console() -> Console:
    """On a terminal, tables fit its width; piped (a file, grep, less), nothing is cut."""
    return out if out.is_terminal else _Console(highlight=False, width=PIPED_WIDTH)


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


def one_line(exc: BaseException) -> str:
    """The line a failure is shown (and logged) as: ours as written, anything else as internal."""
    if isinstance(exc, DialerError):
        return f"error: {exc}"
    return f"internal error: {type(exc).__name__}: {exc}; set DIALER_DEBUG=1 for details"


def quiet_broken_pipe() -> None:
    """The reader went away (`| head`): end quietly, as `cat` does. Pointing stdout at devnull
    stops Python's exit-time flush from failing again with "Exception ignored"."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def guarded(func: F) -> F:
    """Every failure becomes one line on stderr and its documented exit code; no tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except BrokenPipeError:
            quiet_broken_pipe()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except DialerError as exc:
            err.print(one_line(exc), markup=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted; the run stays resumable", markup=False)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except SystemExit as exc:
            raise typer.Exit(int(exc.code or 0)) from None
        except Exception as exc:  # noqa: BLE001 - the promise is: no traceback, ever
            if os.environ.get("DIALER_DEBUG"):
                raise
            err.print(one_line(exc), markup=False, soft_wrap=True)
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
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Call a list of leads through Twilio, never more than N at once."""


# -- shared plumbing ------------------------------------------------------------------------------


def settings_for(config: Path | None, **flags: object) -> Settings:
    return load_settings(config, os.environ, {k: v for k, v in flags.items() if v is not None})


def open_store(db: Path | None, readonly: bool = False) -> Store:
    path = db or default_db_path()
    check_db_path(path)
    return Store.open(path, readonly=readonly)


def check_db_path(path: Path) -> None:
    """`--db leads.csv/x.db`: say that a file stands where a folder is needed, not "File exists"."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--db {path}: {parent} is a file, not a folder")
            return


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
