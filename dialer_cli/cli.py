"""The `dialer` command: flags in, one core call, a view out.

Exit codes (every command): 0 done · 1 runtime failure · 2 bad input or usage ·
3 stopped before done · 4 busy · 130 interrupted twice.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from dialer_cli import __version__, render, report, runner
from dialer_cli.config import (
    Settings,
    default_config_path,
    default_db_path,
    describe,
    load_settings,
)
from dialer_cli.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_STOPPED,
    DialerError,
    InputError,
)
from dialer_cli.models import RunStatus
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
config_app = typer.Typer(no_args_is_help=True, help="Show the configuration and where it lives.")
db_app = typer.Typer(no_args_is_help=True, help="Where the database lives.")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")

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


def choose_view(store: Store, run_id: int, as_json: bool, quiet: bool) -> Any:
    if as_json:
        return render.JsonView(sys.stdout)
    if err.is_terminal and not quiet:
        return render.LiveView(err, lambda: report.live_data(store, run_id, time.time()))
    return render.LineView(sys.stderr, quiet=quiet)


def drive_and_report(
    store: Store,
    run_id: int,
    target: runner.Target,
    *,
    as_json: bool,
    quiet: bool,
    concurrency: int | None = None,
    no_wait: bool = False,
) -> None:
    """Run the loop with the right view, then print the summary and exit with the right code."""
    view = choose_view(store, run_id, as_json, quiet)
    started = time.time()

    def notice() -> None:
        err.print("stopping: no new calls; waiting for calls in flight (Ctrl-C again to quit now)")

    interrupts = Interrupts(notice)
    try:
        with interrupts.installed():
            status = runner.drive(
                store,
                run_id,
                target,
                on_event=view.on_event,
                should_drain=lambda: interrupts.count > 0,
                sleep=view.sleep,
                concurrency=concurrency,
                no_wait=no_wait,
            )
    finally:
        view.close()
    snap = runner.snapshot(store, run_id, time.time())
    if as_json:
        print(json.dumps({"event": "status", **snap}, ensure_ascii=False))
    else:
        print(render.summary_line(snap, time.time() - started), flush=True)
    if status == RunStatus.STOPPED:
        if not as_json:
            err.print(f"run {run_id} stopped; continue it with `dialer resume {run_id}`")
        raise typer.Exit(EXIT_STOPPED)


def confirm(count: int, target: runner.Target, yes: bool) -> None:
    """Ask before dialling real people from a terminal; cron (no terminal) is never asked."""
    if yes or target.simulated or not sys.stdin.isatty():
        return
    question = (
        f"Dial {count} leads from {target.from_number} through account "
        f"{runner.short_sid(target.account_sid)}?"
    )
    if not typer.confirm(question, default=False, err=True):
        raise DialerError("not confirmed; nothing was dialled")


# -- commands -------------------------------------------------------------------------------------


@app.command()
@guarded
def start(
    source: Annotated[Path, typer.Argument(help="CSV file of leads (header row required).")],
    concurrency: ConcurrencyOption = None,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Dial the built-in Twilio simulator, not Twilio.")
    ] = False,
    sim_speed: Annotated[
        float, typer.Option("--sim-speed", min=0.1, help="Simulated time runs this much faster.")
    ] = 20.0,
    sim_seed: Annotated[int, typer.Option("--sim-seed", help="Seed of simulated outcomes.")] = 0,
    phone_column: Annotated[
        str | None, typer.Option("--phone-column", help="Column holding the number.")
    ] = None,
    new: Annotated[bool, typer.Option("--new", help="Start a new run even if one exists.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check config and leads; write and dial nothing.")
    ] = False,
    no_wait: NoWaitOption = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Import leads and call them, keeping at most N calls in flight.

    Example: dialer start leads.sample.csv --simulate
    """
    from dialer_cli.leads import read_csv

    settings = settings_for(
        config, **{"dialing.concurrency": concurrency, "leads.phone_column": phone_column}
    )
    lead_source = read_csv(
        source,
        phone_column=settings.leads.phone_column,
        default_region=settings.leads.default_region,
    )
    if dry_run:
        show_dry_run(lead_source, settings, db, simulate, as_json)
        return
    with target_context(settings, simulate, sim_speed, sim_seed) as target:
        if not settings.dialing.calling_hours and not target.simulated and not quiet:
            err.print(
                "warning: no dialing.calling_hours set: calls may go out at any hour "
                "(US law allows 8am-9pm in the callee's local time)"
            )
        runner.check_templates(settings, lead_source.columns)
        with new_database_or_none(db) as store:
            runner.check_source(store, lead_source, target, new)
            run_id = runner.import_run(store, lead_source, settings, target, time.time())
        snap = runner.snapshot(store, run_id, time.time())
        if not as_json:
            print(f"run {run_id}", flush=True)
            err.print(
                f"imported {snap['total_leads']} leads from {source} "
                f"({snap['skipped']} skipped); dialing through {snap['target']}"
            )
        try:
            confirm(snap["total_leads"], target, yes)
        except DialerError:
            store.delete_run(run_id)
            raise
        drive_and_report(store, run_id, target, as_json=as_json, quiet=quiet, no_wait=no_wait)


@contextmanager
def new_database_or_none(db: Path | None) -> Iterator[Store]:
    """Open the database; if this created it and the import then fails, remove it again, so
    bad input leaves the disk exactly as it was."""
    path = Path(db or default_db_path())
    existed = path.exists()
    store = open_store(path)
    try:
        yield store
    except BaseException:
        if not existed:
            store.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        raise


def show_dry_run(
    source: Any, settings: Settings, db: Path | None, simulate: bool, as_json: bool
) -> None:
    if not simulate:
        runner.twilio_target(settings)  # credentials are part of a usable configuration
    path = db or default_db_path()
    store = Store.open(path, readonly=True) if path.exists() else None
    plan = runner.dry_run(source, settings, store, time.time())
    if as_json:
        print(json.dumps(plan, ensure_ascii=False))
        return
    print(
        f"{plan['source']}: {plan['rows']} rows; would dial {plan['would_dial']} "
        f"with at most {plan['concurrency']} calls in flight"
    )
    buckets = [*plan["skipped"].items(), ("outside calling hours now", plan["outside_hours_now"])]
    for reason, bucket in buckets:
        if bucket["count"]:
            print(f"  {reason}: {bucket['count']}")
            for example in bucket["examples"]:
                print(f"    line {example['line']}: {example['phone']} ({example['detail']})")
    print("dry run: nothing was written and nobody was called")


@contextmanager
def target_context(
    settings: Settings, simulate: bool, speed: float, seed: int
) -> Iterator[runner.Target]:
    if simulate:
        with runner.simulator_target(speed, seed, settings.twilio.http_timeout) as target:
            yield target
    else:
        yield runner.twilio_target(settings)


@app.command()
@guarded
def resume(
    run_id: Annotated[int, typer.Argument(help="The run to continue.")],
    concurrency: ConcurrencyOption = None,
    sim_speed: Annotated[float, typer.Option("--sim-speed", min=0.1)] = 20.0,
    no_wait: NoWaitOption = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Continue a stopped, failed or crashed run: settle calls in flight first, then dial the rest.

    Example: dialer resume 7
    """
    store = open_store(db)
    run_ = store.get_run(run_id)
    if run_.status == RunStatus.COMPLETED:
        raise InputError(f"run {run_id} is already completed; nothing to resume")
    settings = settings_for(config)
    with run_target(run_, settings, sim_speed) as target:
        drive_and_report(
            store,
            run_id,
            target,
            as_json=as_json,
            quiet=quiet,
            concurrency=concurrency,
            no_wait=no_wait,
        )


@contextmanager
def run_target(run_: Any, settings: Settings, speed: float) -> Iterator[runner.Target]:
    if run_.simulated:
        with runner.simulator_target(speed, 0, settings.twilio.http_timeout) as target:
            yield target
    else:
        yield runner.target_for_run(run_, settings)


@app.command()
@guarded
def status(
    run_id: Annotated[int, typer.Argument(help="The run to show.")],
    as_json: JsonOption = False,
    once: Annotated[bool, typer.Option("--once", help="One snapshot, even on a terminal.")] = False,
    db: DbOption = None,
) -> None:
    """Show a run: live on a terminal until it ends, one snapshot otherwise.

    Example: dialer status 7 --json
    """
    store = open_store(db, readonly=True)
    if as_json:
        print(json.dumps(runner.snapshot(store, run_id, time.time()), ensure_ascii=False))
        return
    if once or not out.is_terminal:
        out.print(render.status_table(runner.snapshot(store, run_id, time.time())))
        return
    view = render.LiveView(out, lambda: report.live_data(store, run_id, time.time()))
    try:
        while runner.snapshot(store, run_id, time.time())["status"] in (
            RunStatus.RUNNING,
            RunStatus.STOPPING,
        ):
            view.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        view.close()
    print(render.summary_line(runner.snapshot(store, run_id, time.time())), flush=True)


@app.command()
@guarded
def stop(
    run_id: Annotated[int, typer.Argument(help="The run to stop.")],
    cancel_active: Annotated[
        bool, typer.Option("--cancel-active", help="Also end the calls in flight through Twilio.")
    ] = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Dial nothing new; calls in flight finish (or end, with --cancel-active).

    Example: dialer stop 7
    """
    store = open_store(db)
    run_ = runner.stop(store, run_id, cancel=cancel_active, now=time.time())
    if cancel_active and run_.status == RunStatus.STOPPED and store.counts(run_id)["in_progress"]:
        # Nobody drives the run: end its calls ourselves, through the run's own account.
        with run_target(run_, settings_for(config), 20.0) as target:
            runner.drive(
                store,
                run_id,
                target,
                on_event=render.LineView(sys.stderr).on_event,
                stop_mode="cancel",
            )
    err.print(f"run {run_id}: {runner.snapshot(store, run_id, time.time())['status']}")


@app.command()
@guarded
def runs(as_json: JsonOption = False, db: DbOption = None) -> None:
    """List all runs, newest first.

    Example: dialer runs --json
    """
    store = open_store(db, readonly=True)
    now = time.time()
    snaps = [runner.snapshot(store, r.id, now) for r in store.runs()]
    if as_json:
        print(json.dumps(snaps, ensure_ascii=False))
    else:
        out.print(render.runs_table(snaps))


@app.command()
@guarded
def calls(
    run: Annotated[int | None, typer.Option("--run", help="Only this run's calls.")] = None,
    page: Annotated[int, typer.Option("--page", min=1)] = 1,
    page_size: Annotated[int, typer.Option("--page-size", min=1, max=1000)] = 50,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Recent calls, newest first, a page at a time.

    Example: dialer calls --run 7 --page 2 --json
    """
    store = open_store(db, readonly=True)
    rows, total = store.calls_page(run, page, page_size)
    data = {
        "items": [runner.call_item(r) for r in rows],
        "total": total,
        "page": page,
        "page_size": page_size,
    }
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        out.print(render.calls_table(data))


@app.command("cleanup-stuck")
@guarded
def cleanup_stuck(
    run: Annotated[int | None, typer.Option("--run", help="Only this run.")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Settle calls left dialing or calling by a dead process, by asking Twilio.

    Example: dialer cleanup-stuck --run 7
    """
    store = open_store(db)
    settings = settings_for(config)
    candidates = [store.get_run(run)] if run is not None else store.runs()
    for run_ in candidates:
        if not store.counts(run_.id)["in_progress"]:
            continue
        with run_target(run_, settings, 20.0) as target:
            runner.drive(
                store,
                run_.id,
                target,
                on_event=render.LineView(sys.stderr).on_event,
                stop_mode="drain",
                passes=1,
            )
        left = store.counts(run_.id)["in_progress"]
        err.print(f"run {run_.id}: {left} still in flight at Twilio; `dialer resume {run_.id}`")


@app.command()
@guarded
def simulator(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0 = any free one).")] = 0,
    speed: Annotated[float, typer.Option("--speed", min=0.1)] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Serve the built-in Twilio simulator on 127.0.0.1 for manual testing.

    Example: dialer simulator --port 8765 --speed 10
    """
    from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator

    sim = Simulator(speed=speed, seed=seed)
    err.print(
        f"point twilio.base_url at the URL below; account_sid {DEFAULT_ACCOUNT_SID}, "
        f"auth_token {DEFAULT_AUTH_TOKEN} (simulator only). Ctrl-C stops it."
    )
    sim.start(port)
    print(sim.url, flush=True)
    sim.serve_forever()


@config_app.command("show")
@guarded
def config_show(config: ConfigOption = None) -> None:
    """Every setting with its value and where it came from (the auth token is never shown).

    Example: dialer config show
    """
    for key, value, source in describe(settings_for(config)):
        out.print(f"{key} = {value}  [{source}]", markup=False)


@config_app.command("path")
@guarded
def config_path(config: ConfigOption = None) -> None:
    """The configuration file dialer reads.

    Example: dialer config path
    """
    print(config or default_config_path())


@db_app.command("path")
@guarded
def db_path(db: DbOption = None) -> None:
    """The database file dialer uses.

    Example: dialer db path
    """
    print(db or default_db_path())


dnc_app = typer.Typer(no_args_is_help=True, help="The do-not-call list kept in the database.")
app.add_typer(dnc_app, name="dnc")


def dnc_numbers(numbers: list[str], config: Path | None) -> list[str]:
    from dialer_cli.leads import normalize

    region = settings_for(config).leads.default_region
    valid, bad = [], []
    for raw in numbers:
        e164, _, _ = normalize(raw, region)
        (valid if e164 else bad).append(e164 or raw)
    if bad:
        raise InputError(f"not a valid phone number: {', '.join(bad)}")
    return valid


@dnc_app.command("add")
@guarded
def dnc_add(
    numbers: Annotated[list[str], typer.Argument(help="Numbers, in any format.")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Never call these numbers, in any run, from now on (also runs in progress).

    Example: dialer dnc add "+1 212 555 0101"
    """
    added = open_store(db).dnc_add(dnc_numbers(numbers, config), "dnc add", time.time())
    err.print(f"{added} added to the do-not-call list")


@dnc_app.command("remove")
@guarded
def dnc_remove(
    numbers: Annotated[list[str], typer.Argument(help="Numbers, in any format.")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Take numbers off the do-not-call list.

    Example: dialer dnc remove +12125550101
    """
    removed = open_store(db).dnc_remove(dnc_numbers(numbers, config))
    err.print(f"{removed} removed from the do-not-call list")


@dnc_app.command("list")
@guarded
def dnc_list(as_json: JsonOption = False, db: DbOption = None) -> None:
    """The numbers on the do-not-call list.

    Example: dialer dnc list --json
    """
    rows = open_store(db).dnc_list()
    if as_json:
        print(json.dumps([r | {"added_at": runner.iso(r["added_at"])} for r in rows]))
        return
    for row in rows:
        print(f"{row['e164']}\t{runner.iso(row['added_at'])}\t{row['source'] or ''}")


@dnc_app.command("import")
@guarded
def dnc_import(
    file: Annotated[Path, typer.Argument(help="A file of numbers (one per line, or CSV).")],
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Add every number in a file to the do-not-call list.

    Example: dialer dnc import opt-outs.csv
    """
    from dialer_cli.rules import read_numbers

    numbers = read_numbers(file, settings_for(config).leads.default_region)
    added = open_store(db).dnc_add(sorted(numbers), str(file), time.time())
    err.print(f"{added} of {len(numbers)} numbers from {file} added to the do-not-call list")


def main() -> None:
    app()
