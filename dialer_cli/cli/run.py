"""Commands that drive runs: start, resume, stop, cleanup-stuck."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from dialer_cli import intake, lease, metrics, render, report, runner
from dialer_cli.cli.common import (
    ConcurrencyOption,
    ConfigOption,
    DbOption,
    F,
    Interrupts,
    JsonOption,
    MaskOption,
    NoWaitOption,
    QuietOption,
    app,
    err,
    guarded,
    one_line,
    open_store,
    out,
    settings_for,
)
from dialer_cli.config import (
    Settings,
    concurrency_warning,
    default_db_path,
    load_settings,
    require_message,
)
from dialer_cli.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_STOPPED,
    BusyError,
    DialerError,
    InputError,
    StoreError,
)
from dialer_cli.models import RunStatus
from dialer_cli.store import Store


@dataclass
class Output:
    """How a driving command reports: JSON, live, or plain lines (plus an optional log file)."""

    as_json: bool = False
    quiet: bool = False
    log_file: Path | None = None
    mask: bool = False

    def view(self, store: Store, run_id: int) -> Any:
        log = self.log_file.open("a", encoding="utf-8") if self.log_file else None
        if self.as_json:
            view: Any = render.JsonView(sys.stdout)
        elif err.is_terminal and out.is_terminal and not self.quiet:
            view = render.LiveView(
                err, lambda: report.live_data(store, run_id, time.time()), mask=self.mask
            )
        else:
            return render.LineView(sys.stderr, quiet=self.quiet, log=log)
        return Tee(view, render.LineView(sys.stderr, quiet=True, log=log)) if log else view

    def log(self, line: str) -> None:
        if self.log_file:
            with self.log_file.open("a", encoding="utf-8") as log:
                log.write(f"{render.stamp(time.time())} {line}\n")

    def message(self, text: str) -> None:
        if not self.quiet and not self.as_json:
            err.print(text)


class Tee:
    """Show events in one view and log them in another (a terminal and --log-file)."""

    def __init__(self, shown: Any, logged: Any):
        self.shown, self.logged = shown, logged

    def on_event(self, event: Any) -> None:
        self.logged.on_event(event)
        self.shown.on_event(event)

    def sleep(self, seconds: float) -> None:
        self.shown.sleep(seconds)

    def stopping(self, notice: str) -> None:
        self.shown.stopping(notice)

    def close(self) -> None:
        self.shown.close()


STOPPING = "stopping: no new calls; waiting for calls in flight (Ctrl-C again to quit now)"


def drive_and_report(
    store: Store,
    run_id: int,
    target: runner.Target,
    output: Output,
    *,
    concurrency: int | None = None,
    no_wait: bool = False,
    deadline: float | None = None,
    metrics_file: Path | None = None,
) -> None:
    """Run the loop with the right view, then print the summary and exit with the right code.
    With `metrics_file`, the metrics are written while the run goes and once at the end with
    the exit status this command ends with, whatever ends it."""
    if metrics_file is None:
        drive_and_summarise(store, run_id, target, output, concurrency, no_wait, deadline)
        return
    written = metrics.MetricsFile(metrics_file, store, run_id)
    code = EXIT_FAILURE
    try:
        drive_and_summarise(
            store, run_id, target, output, concurrency, no_wait, deadline, written.tend
        )
        code = 0
    except BaseException as exc:
        code = exit_code_of(exc)
        raise
    finally:
        try:
            written.write(time.time(), code)
        except OSError as exc:
            output.message(f"warning: --metrics-file {metrics_file}: {exc.strerror}")


def exit_code_of(exc: BaseException) -> int:
    """The exit status `guarded` turns an exception into (for the metrics file)."""
    if isinstance(exc, typer.Exit):
        return int(exc.exit_code)
    if isinstance(exc, DialerError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_FAILURE
    return EXIT_FAILURE


def summarise(store: Store, run_id: int, output: Output, started: float) -> None:
    """The summary on stdout (or the status object with --json), and what write-back left."""
    snap = report.status_object(store, run_id, time.time())  # with stats: the cost, too
    summary = render.summary_line(snap, time.time() - started, snap["stats"]["cost"])
    output.log(summary)
    if output.as_json:
        print(json.dumps({"event": "status", **snap}, ensure_ascii=False))
    else:
        print(summary, flush=True)
    if snap["writeback"] and (snap["writeback"]["pending"] or snap["writeback"]["failed"]):
        line = writeback_line(run_id, snap["writeback"])
        output.log(line)
        if not output.as_json:
            err.print(line, markup=False)  # also with -q: the CRM is missing outcomes


def drive_and_summarise(
    store: Store,
    run_id: int,
    target: runner.Target,
    output: Output,
    concurrency: int | None,
    no_wait: bool,
    deadline: float | None,
    tend: Callable[[float], object] = lambda now: None,
) -> None:
    view = output.view(store, run_id)
    started = time.time()

    interrupts = Interrupts(lambda: view.stopping(STOPPING))
    # Installed until the summary is out: a first SIGTERM or Ctrl-C while it is written changes
    # nothing (the run has ended), where the default action would end the process mid-line.
    with interrupts.installed():
        try:
            status = runner.drive(
                store,
                run_id,
                target,
                on_event=view.on_event,
                should_drain=lambda: interrupts.count > 0,
                sleep=view.sleep,
                concurrency=concurrency,
                no_wait=no_wait,
                deadline=deadline,
                tend=tend,
            )
        finally:
            interrupts.notice = lambda: None
            view.close()
        summarise(store, run_id, output, started)
    if status == RunStatus.STOPPED:
        output.message(f"run {run_id} stopped; continue it with `dialer resume {run_id}`")
        raise typer.Exit(EXIT_STOPPED)


def writeback_line(run_id: int, counts: dict[str, Any]) -> str:
    """What the CRM is still missing, and the command that sends it."""
    error = f" (last error: {counts['last_error']})" if counts["last_error"] else ""
    return (
        f"write-back: {counts['pending']} pending, {counts['failed']} refused by the source"
        f"{error}; `dialer writeback {run_id}` writes what is pending"
    )


def confirm(count: int, target: runner.Target, yes: bool, says: str) -> bool:
    """Ask before dialling real people from a terminal; cron (no terminal) is never asked."""
    if yes or target.simulated or not sys.stdin.isatty():
        return True
    question = (
        f"Each call says: {says}\n"
        f"Dial {render.plural(count, 'lead')} from {target.from_number} through account "
        f"{runner.short_sid(target.account_sid)}?"
    )
    return bool(typer.confirm(question, default=False, err=True))


def what_is_said(settings: Settings, width: int = 60) -> str:
    """The start of the TwiML, or the URL Twilio fetches it from: the prompt shows it."""
    if settings.call.url:
        return f"the TwiML at {settings.call.url}"
    twiml = " ".join((settings.call.twiml or runner.DEFAULT_TWIML).split())
    return twiml if len(twiml) <= width else twiml[: width - 1] + "…"


def logged(func: F) -> F:
    """`--log-file`: checked before anything else happens (a path that cannot be written is one
    line, exit 2, and no run), and given every error, even the earliest (a bad CSV, a YAML
    syntax error): cron users read only the log."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        log_file = kwargs.get("log_file")
        if log_file is None:
            return func(*args, **kwargs)
        try:
            log_file.open("a", encoding="utf-8").close()
        except OSError as exc:
            raise InputError(
                f"--log-file {log_file}: cannot write there ({exc.strerror})"
            ) from None
        try:
            return func(*args, **kwargs)
        except (typer.Exit, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            Output(log_file=log_file).log(one_line(exc))
            raise

    return wrapper  # type: ignore[return-value]


UntilOption = Annotated[
    str | None,
    typer.Option("--until", help="Local time HH:MM: dial nothing new after it, then exit 3."),
]
MaxDurationOption = Annotated[
    str | None,
    typer.Option("--max-duration", help="90s, 45m, 2h: dial nothing new after it, then exit 3."),
]
LogFileOption = Annotated[
    Path | None, typer.Option("--log-file", help="Append one timestamped line per event.")
]
MetricsFileOption = Annotated[
    Path | None,
    typer.Option(
        "--metrics-file",
        help="Write the run's metrics here (Prometheus text format, for node_exporter's "
        "textfile collector): every 15 s and at the end.",
    ),
]


# -- commands -------------------------------------------------------------------------------------


@app.command()
@guarded
@logged
def start(
    source: Annotated[
        str | None,
        typer.Argument(
            help="CSV file, or a database URL with --query/--table.", show_default=False
        ),
    ] = None,
    campaign: Annotated[
        str | None, typer.Option("--campaign", help="A campaign named in the configuration.")
    ] = None,
    query: Annotated[str | None, typer.Option("--query", help="SQL selecting the leads.")] = None,
    table: Annotated[str | None, typer.Option("--table", help="A table of leads.")] = None,
    writeback: Annotated[
        str | None,
        typer.Option(
            "--writeback",
            help="SQL run on the source for each lead that ends, e.g. "
            "UPDATE leads SET status = :outcome WHERE id = :id",
        ),
    ] = None,
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
    until: UntilOption = None,
    max_duration: MaxDurationOption = None,
    log_file: LogFileOption = None,
    metrics_file: MetricsFileOption = None,
    mask: MaskOption = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Import leads and call them, keeping at most N calls in flight.

    Example: dialer start leads.sample.csv --simulate
    """
    from dialer_cli.sources import open_source

    if metrics_file is not None:
        metrics.check_writable(metrics_file)
    deadline = runner.deadline(until, max_duration, time.time())
    flags = {"dialing.concurrency": concurrency, "leads.phone_column": phone_column}
    settings = load_settings(config, os.environ, flags, campaign=campaign)
    if campaign is not None:
        chosen = settings.campaigns[campaign]
        source = source or chosen.source
        if query is None and table is None:
            query, table = chosen.query, chosen.table
        writeback = writeback if writeback is not None else chosen.writeback
    if source is None:
        raise InputError("start needs a SOURCE (a CSV file or a database URL) or --campaign NAME")
    lead_source = open_source(
        source,
        query=query,
        table=table,
        phone_column=settings.leads.phone_column,
        default_region=settings.leads.default_region,
    )
    writeback_spec = checked_writeback(source, writeback, lead_source.columns)
    if dry_run:
        show_dry_run(lead_source, settings, db, simulate, as_json)
        return
    output = Output(as_json, quiet, log_file, mask)
    with target_context(settings, simulate, sim_speed, sim_seed) as target:
        if not target.simulated:
            require_message(settings)  # after the credentials: those come first in the file
        intake.check_templates(settings, lead_source.columns)
        runner.reach(target, "nothing was written")  # bad input first, then is Twilio there?
        with campaign_lock(db, campaign):
            with new_database_or_none(db) as store:
                run_id = intake.existing_campaign_run(store, campaign, target, new)
                resuming = run_id is not None
                if run_id is None and campaign is None:
                    intake.check_source(store, lead_source, target, new)
                if run_id is None:
                    now = time.time()
                    run_id = intake.import_run(
                        store,
                        lead_source,
                        settings,
                        target,
                        now,
                        campaign,
                        new=new,
                        writeback=writeback_spec,
                    )
                    confirm_or_discard(store, run_id, target, yes, what_is_said(settings))
            if resuming:
                output.message(f"campaign {campaign}: resuming its unfinished run {run_id}")
                output.log(f"campaign {campaign}: resuming its unfinished run {run_id}")
            else:
                announce(store, run_id, output, settings, target)
            drive_and_report(
                store,
                run_id,
                target,
                output,
                concurrency=concurrency if resuming else None,  # a new run has it in its settings
                no_wait=no_wait,
                deadline=deadline,
                metrics_file=metrics_file,
            )


def checked_writeback(source: str, sql: str | None, columns: list[str]) -> dict[str, str] | None:
    """The run's write-back setting, once the statement is known to be able to work."""
    if sql is None:
        return None
    from dialer_cli import writeback

    writeback.check(source, sql, columns)
    return writeback.spec(source, sql)


def confirm_or_discard(
    store: Store, run_id: int, target: runner.Target, yes: bool, says: str
) -> None:
    """Ask before dialling real people. Declined: the run goes again (and a database this
    command created, see new_database_or_none), one line says so, and the exit code is 0: the
    user chose, nothing failed (as `rm -i` or `git clean -i` answered no)."""
    total = store.counts(run_id)["total_leads"]
    if not confirm(total, target, yes, says):
        store.delete_run(run_id)
        err.print("not confirmed: nothing was saved and nobody was called", markup=False)
        raise typer.Exit(0)


def announce(
    store: Store, run_id: int, output: Output, settings: Settings, target: runner.Target
) -> None:
    """Name the new run first (it exists now), then what was imported and any warnings."""
    snap = runner.snapshot(store, run_id, time.time())
    if not output.as_json and not output.quiet:
        print(f"run {run_id}", flush=True)
    output.message(
        f"imported {render.plural(snap['total_leads'], 'lead')} from {snap['source']} "
        f"({snap['skipped']} skipped); dialing through {snap['target']}"
    )
    warnings = [] if target.simulated else [concurrency_warning(settings.dialing.concurrency)]
    if not settings.dialing.calling_hours:
        warnings.append(
            "warning: no dialing.calling_hours set: calls may go out at any hour "
            "(US law allows 8am-9pm in the callee's local time)"
        )
    for warning in filter(None, warnings):
        output.message(warning)
        output.log(warning)


@contextmanager
def campaign_lock(db: Path | None, campaign: str | None) -> Iterator[None]:
    """One invocation of a campaign at a time: a second cron start exits 4 at once."""
    if campaign is None:
        yield
        return
    path = Path(db or default_db_path())
    with lease.NamedLock(path, f"campaign-{campaign}") as lock:
        try:
            lock.acquire(f"campaign {campaign} is already being dialled by another process")
        except BusyError as exc:
            raise BusyError(f"{exc}{campaign_run_named(path, campaign)}") from None
        yield


def campaign_run_named(path: Path, campaign: str) -> str:
    """`(run N)` for the campaign's unfinished run, once the other process has committed it
    (reading inside a write transaction waits for an import in progress to end)."""
    if not path.exists():
        return ""
    store = Store.open(path)
    try:
        with store.transaction():
            runs = [r for r in store.runs() if r.campaign == campaign]
    finally:
        store.close()
    unfinished = [r.id for r in runs if r.status != RunStatus.COMPLETED]
    return f" (run {unfinished[0]})" if unfinished else ""


@contextmanager
def new_database_or_none(db: Path | None) -> Iterator[Store]:
    """Open the database; if this created it and the import then fails, remove it again, so
    bad input leaves the disk exactly as it was."""
    path = Path(db or default_db_path())
    created = create_exclusively(path)
    try:
        store = open_store(path)
    except BaseException:
        if created:
            path.unlink(missing_ok=True)
        raise
    try:
        yield store
    except (BusyError, StoreError):
        raise  # it lost a race to another start: that one is dialling from this database
    except BaseException:
        # Only the process that created the file removes it: another start may be using it.
        if created:
            store.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        raise


def create_exclusively(path: Path) -> bool:
    """Create the database file if it does not exist; True only in the one process that did."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except OSError:
        return False  # it exists (or cannot be created: open_store names the problem)
    return True


def show_dry_run(
    source: Any, settings: Settings, db: Path | None, simulate: bool, as_json: bool
) -> None:
    if not simulate:
        runner.twilio_target(settings)  # credentials are part of a usable configuration
        require_message(settings)
    path = db or default_db_path()
    store = Store.open(path, readonly=True) if path.exists() else None
    plan = intake.dry_run(source, settings, store, time.time())
    if as_json:
        print(json.dumps(plan, ensure_ascii=False))
        return
    print(
        f"{plan['source']}: {render.plural(plan['rows'], 'row')}; would dial "
        f"{plan['would_dial']} with at most {render.plural(plan['concurrency'], 'call')} in flight"
    )
    buckets = [*plan["skipped"].items(), ("outside calling hours now", plan["outside_hours_now"])]
    for reason, bucket in buckets:
        if bucket["count"]:
            print(f"  {reason}: {bucket['count']}")
            for example in bucket["examples"]:
                print(f"    line {example['line']}: {dry_run_example(example)}")
    print("dry run: nothing was written and nobody was called")


def dry_run_example(example: dict[str, Any]) -> str:
    """`+1 212 555 01` (too short) — or `no number` for an empty cell, never `(None)`."""
    phone = example["phone"].strip() if example["phone"] else ""
    detail = f" ({example['detail']})" if example["detail"] else ""
    return f"{phone}{detail}" if phone else f"no number{detail}"


@contextmanager
def target_context(
    settings: Settings, simulate: bool, speed: float, seed: int
) -> Iterator[runner.Target]:
    if simulate:
        tw = settings.twilio
        with runner.simulator_target(speed, seed, tw.http_timeout, tw.give_up_after) as target:
            yield target
    else:
        yield runner.twilio_target(settings)


@app.command()
@guarded
@logged
def resume(
    run_id: Annotated[int, typer.Argument(help="The run to continue.")],
    concurrency: ConcurrencyOption = None,
    sim_speed: Annotated[
        float,
        typer.Option("--sim-speed", min=0.1, help="Simulated runs: time runs this much faster."),
    ] = 20.0,
    no_wait: NoWaitOption = False,
    until: UntilOption = None,
    max_duration: MaxDurationOption = None,
    log_file: LogFileOption = None,
    metrics_file: MetricsFileOption = None,
    mask: MaskOption = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Continue a stopped, failed or crashed run: settle calls in flight first, then dial the rest.

    Example: dialer resume 7
    """
    if metrics_file is not None:
        metrics.check_writable(metrics_file)
    deadline = runner.deadline(until, max_duration, time.time())
    store = open_store(db)
    run_ = store.get_run(run_id)
    if run_.status == RunStatus.COMPLETED:
        raise InputError(f"run {run_id} is already completed; nothing to resume")
    settings = settings_for(config)
    output = Output(as_json, quiet, log_file, mask)
    with run_target(run_, settings, sim_speed) as target:
        runner.reach(target, f"run {run_id} was left as it was")
        drive_and_report(
            store,
            run_id,
            target,
            output,
            concurrency=concurrency,
            no_wait=no_wait,
            deadline=deadline,
            metrics_file=metrics_file,
        )


@contextmanager
def run_target(run_: Any, settings: Settings, speed: float) -> Iterator[runner.Target]:
    if run_.simulated:
        tw = settings.twilio
        with runner.simulator_target(speed, 0, tw.http_timeout, tw.give_up_after) as target:
            yield target
    else:
        yield runner.target_for_run(run_, settings)


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
    driven = run_.status in (RunStatus.RUNNING, RunStatus.STOPPING)
    if cancel_active and not driven and store.pending(run_id)[0]:
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


@app.command("cleanup-stuck")
@guarded
def cleanup_stuck(
    run: Annotated[int | None, typer.Option("--run", help="Only this run.")] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Settle calls left dialing or calling by a dead process, by asking Twilio.

    Says what it did, run by run; exits 1 if Twilio cannot be reached (nothing is settled).

    Example: dialer cleanup-stuck --run 7
    """
    store = open_store(db)
    settings = settings_for(config)
    candidates = [store.get_run(run)] if run is not None else store.runs()
    stuck = [(r, n) for r in candidates if (n := store.counts(r.id)["in_progress"])]
    if not stuck:
        where = f"run {run} has" if run is not None else "no run has"
        err.print(f"nothing stuck: {where} calls in flight", markup=False)
    for run_, before in stuck:
        events: list[Any] = []
        with run_target(run_, settings, 20.0) as target:
            runner.reach(target, f"run {run_.id}'s {before} calls in flight were left as they were")
            runner.drive(
                store, run_.id, target, on_event=events.append, stop_mode="drain", passes=1
            )
        left = store.counts(run_.id)["in_progress"]
        err.print(render.cleanup_line(run_.id, before, left, events), markup=False)
