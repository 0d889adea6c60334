"""Supporting commands: the simulator, configuration, database paths, do-not-call."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from dialer_cli import lease, runner
from dialer_cli.cli.common import (
    App,
    ConfigOption,
    DbOption,
    JsonOption,
    app,
    err,
    guarded,
    open_store,
    settings_for,
)
from dialer_cli.config import default_config_path, default_db_path, describe
from dialer_cli.errors import InputError
from dialer_cli.render import plural

config_app = App(no_args_is_help=True, help="Show the configuration and where it lives.")
db_app = App(no_args_is_help=True, help="Where the database lives.")
dnc_app = App(no_args_is_help=True, help="The do-not-call list kept in the database.")
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(dnc_app, name="dnc")


@app.command()
@guarded
def simulator(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0 = any free one).")] = 0,
    speed: Annotated[
        float, typer.Option("--speed", min=0.1, help="Simulated time runs this much faster.")
    ] = 1.0,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the outcomes (answered, busy, …).")
    ] = 0,
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
        print(f"{key} = {value}  [{source}]")  # never wrapped: piped, a value stays on its line


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
    from dialer_cli.rules import scan_numbers

    numbers, unusable = scan_numbers(file, settings_for(config).leads.default_region)
    added = open_store(db).dnc_add(sorted(numbers), str(file), time.time())
    skipped = ""
    if unusable:
        lines = ", ".join(map(str, unusable[:5])) + (", …" if len(unusable) > 5 else "")
        skipped = f"; skipped {plural(len(unusable), 'line')} without a valid number (line {lines})"
    err.print(
        f"{added} of {plural(len(numbers), 'number')} from {file} added to the do-not-call list"
        f"{skipped}",
        markup=False,
    )


@app.command("writeback")
@guarded
def writeback_command(
    run_id: Annotated[int, typer.Argument(help="The run whose outcomes to write.")],
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Also try again the rows the source refused.")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Write the outcomes still pending to the run's source; exit 1 unless all are written.

    Example: dialer writeback 7
    """
    from dialer_cli import writeback

    store = open_store(db)
    setting = store.get_run(run_id).settings.get("writeback")
    if not isinstance(setting, dict):
        raise InputError(f"run {run_id} has no writeback statement; nothing to write")
    with lease.NamedLock(store.path, writeback.lock_name(run_id)) as lock:
        lock.acquire(f"run {run_id}: its driver is writing its outcomes back right now")
        if retry_failed:
            store.writeback_retry_failed(run_id)
        writer = writeback.Writer(store.path, run_id, setting)
        try:
            writer.write_pending(store, writer.sink, waiting_too=True)
        finally:
            writer.sink.close()
    counts = store.writeback_counts(run_id)
    if as_json:
        print(json.dumps(counts, ensure_ascii=False))
    else:
        print(
            f"run {run_id}: {counts['written']} written, {counts['pending']} pending, "
            f"{counts['failed']} refused by the source"
        )
        if counts["last_error"]:
            err.print(f"last error: {counts['last_error']}", markup=False)
    if counts["pending"] or counts["failed"]:
        raise typer.Exit(1)


@app.command()
@guarded
def doctor(
    source: Annotated[str | None, typer.Argument(help="CSV file or database URL to check.")] = None,
    campaign: Annotated[
        str | None, typer.Option("--campaign", help="Check this campaign of the config file.")
    ] = None,
    query: Annotated[str | None, typer.Option("--query", help="SQL selecting the leads.")] = None,
    table: Annotated[str | None, typer.Option("--table", help="A table of leads.")] = None,
    phone_column: Annotated[
        str | None, typer.Option("--phone-column", help="Column holding the number.")
    ] = None,
    simulate: Annotated[
        bool, typer.Option("--simulate", help="Check for a simulated run (no Twilio account).")
    ] = False,
    as_json: JsonOption = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Check config, database, lead source and Twilio before a run; exit 1 if anything fails.

    Example: dialer doctor --campaign nightly
    """
    from dialer_cli import doctor as checks_

    checks = checks_.diagnose(
        config_path=config,
        env=os.environ,
        db_path=db or default_db_path(),
        campaign=campaign,
        source=source,
        query=query,
        table=table,
        simulate=simulate,
        overrides={"leads.phone_column": phone_column},
    )
    ok = all(c.ok for c in checks)
    if as_json:
        print(json.dumps({"ok": ok, "checks": [dataclasses.asdict(c) for c in checks]}))
    else:
        for c in checks:
            print(f"{'ok' if c.ok else 'FAIL':<4} {c.name:<8} {c.detail}")
    if not ok:
        raise typer.Exit(1)
