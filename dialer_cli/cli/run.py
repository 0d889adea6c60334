"""Commands that drive runs: start, resume, stop, cleanup-stuck."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from dialer_cli import render, report, runner
from dialer_cli.cli.common import (
    ConcurrencyOption,
    ConfigOption,
    DbOption,
    Interrupts,
    JsonOption,
    NoWaitOption,
    QuietOption,
    app,
    err,
    guarded,
    open_store,
    settings_for,
)
from dialer_cli.config import Settings, default_db_path
from dialer_cli.errors import EXIT_STOPPED, DialerError, InputError
from dialer_cli.models import RunStatus
from dialer_cli.store import Store


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
