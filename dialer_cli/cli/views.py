"""Commands that read runs: status, runs, calls."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from dialer_cli import render, report, runner
from dialer_cli.cli.common import (
    DbOption,
    JsonOption,
    app,
    guarded,
    open_store,
    out,
)
from dialer_cli.models import RunStatus


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
