"""Commands that read runs: status, runs, calls, report."""

from __future__ import annotations

import functools
import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from dialer_cli import render, report, runner
from dialer_cli.cli.common import (
    DbOption,
    JsonOption,
    MaskOption,
    app,
    guarded,
    open_store,
    out,
    table_console,
)
from dialer_cli.errors import InputError
from dialer_cli.models import RunStatus
from dialer_cli.render import plural


class ReportFormat(StrEnum):
    CSV = "csv"
    JSON = "json"


@app.command()
@guarded
def status(
    run_id: Annotated[int, typer.Argument(help="The run to show.")],
    as_json: JsonOption = False,
    once: Annotated[bool, typer.Option("--once", help="One snapshot, even on a terminal.")] = False,
    mask: MaskOption = False,
    db: DbOption = None,
) -> None:
    """Show a run: live on a terminal until it ends, one snapshot otherwise.

    Example: dialer status 7 --json
    """
    store = open_store(db, readonly=True)
    if as_json:
        print(json.dumps(report.status_object(store, run_id, time.time()), ensure_ascii=False))
        return
    if once or not out.is_terminal:
        out.print(render.status_table(report.status_object(store, run_id, time.time())))
        return
    view = render.LiveView(out, lambda: report.live_data(store, run_id, time.time()), mask=mask)
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
def runs(as_json: JsonOption = False, db: DbOption = None) -> None:
    """List all runs, newest first.

    Example: dialer runs --json
    """
    store = open_store(db, readonly=True)
    now = time.time()
    snaps = [report.status_object(store, r.id, now) for r in store.runs()]
    if as_json:
        print(json.dumps(snaps, ensure_ascii=False))
    else:
        table_console().print(render.runs_table(snaps))


@app.command()
@guarded
def calls(
    run: Annotated[int | None, typer.Option("--run", help="Only this run's calls.")] = None,
    page: Annotated[
        int, typer.Option("--page", min=1, help="Which page, 1 = the newest calls.")
    ] = 1,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, max=1000, help="Calls per page (at most 1000).")
    ] = 50,
    mask: MaskOption = False,
    as_json: JsonOption = False,
    db: DbOption = None,
) -> None:
    """Recent calls, newest first, a page at a time.

    Example: dialer calls --run 7 --page 2 --json
    """
    store = open_store(db, readonly=True)
    if run is not None:
        store.get_run(run)  # an unknown run is bad input, as for status and report
    rows, total = store.calls_page(run, page, page_size)
    last = max(1, -(-total // page_size))
    if page > last:
        raise InputError(
            f"--page {page} is past the last page, {last} "
            f"({plural(total, 'call')} at {page_size} a page)"
        )
    data = {
        "items": [runner.call_item(r) for r in rows],
        "total": total,
        "page": page,
        "page_size": page_size,
    }
    if as_json:
        print(json.dumps(data, ensure_ascii=False))
    else:
        table_console().print(render.calls_table(data, mask=mask))


@app.command("report")
@guarded
def report_command(
    run_id: Annotated[int, typer.Argument(help="The run to report on.")],
    fmt: Annotated[
        ReportFormat, typer.Option("--format", help="csv for spreadsheets, json for programs.")
    ] = ReportFormat.CSV,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout.")
    ] = None,
    bom: Annotated[
        bool, typer.Option("--bom", help="Start the CSV with a UTF-8 byte order mark (Excel).")
    ] = False,
    db: DbOption = None,
) -> None:
    """One row per lead, in input order: the lead's own columns, then what happened to it.

    Example: dialer report 7 --output run7.csv --bom
    """
    store = open_store(db, readonly=True)
    rows = report.report_rows(store, run_id, time.time())  # an unknown run fails here, exit 2
    if fmt == ReportFormat.JSON:
        write = report.write_json
    else:
        write = functools.partial(report.write_csv, bom=bom)
    if output is None:
        write(rows, sys.stdout)
        return
    try:
        stream = output.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        raise InputError(f"--output {output}: cannot write there ({exc.strerror})") from None
    with stream:
        write(rows, stream)
