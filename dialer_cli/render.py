"""How runs look: plain timestamped lines (pipes, cron), JSON Lines, and Rich tables.

Views receive events and plain dicts; they never decide anything about dialing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from dialer_cli.models import Event

COUNTERS = ("queued", "in_progress", "completed", "failed", "skipped", "needs_review")


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(event: Event) -> str:
    """One human sentence per event, for logs read the next morning."""
    d = event.data
    who = f"{d.get('to', '')}" + (f" ({d['name']})" if d.get("name") else "")
    kind = event.kind
    if kind == "run-started":
        return f"run {event.run_id} started ({d.get('source', '')})"
    if kind == "call-placed":
        return f"call placed to {who}: {d.get('sid')} (attempt {d.get('attempt')})"
    if kind == "call-ended":
        extra = f", {d['duration']}s" if d.get("duration") else ""
        retry = f"; retry at {stamp(float(d['retry_at']))}" if d.get("retry_at") else ""  # type: ignore[arg-type]
        return f"call ended to {who}: {d.get('outcome')}{extra}{retry}"
    if kind == "call-rejected":
        return f"call rejected by Twilio for {who}: {d.get('error')}"
    if kind == "call-unknown":
        return f"no answer to the create for {who} ({d.get('error')}); checking with Twilio"
    if kind == "call-adopted":
        return f"found the call to {who} at Twilio: {d.get('sid')}"
    if kind == "call-not-placed":
        return f"no call to {who} was placed; it goes back in the queue"
    if kind == "call-needs-review":
        return f"several possible calls to {who}: needs review, never redialled"
    if kind == "create-retry":
        return (
            f"Twilio asked us to slow down ({d.get('error')}); next create in {d.get('retry_in')}s"
        )
    if kind == "poll-retry":
        return f"could not poll {who} ({d.get('error')}); retrying in {d.get('retry_in')}s"
    if kind == "call-canceling":
        return f"ending call to {who}: {d.get('sid')}"
    if kind == "run-finished":
        return f"run {event.run_id} {d.get('status')}"
    return f"{kind} {json.dumps(d, ensure_ascii=False, default=str)}"


class LineView:
    """One timestamped plain line per event: no colours, no cursor movement."""

    def __init__(self, stream: TextIO, quiet: bool = False, log: TextIO | None = None):
        self.stream, self.quiet, self.log = stream, quiet, log

    def on_event(self, event: Event) -> None:
        line = f"{stamp(event.at)} {describe(event)}"
        if self.log is not None:
            self.log.write(line + "\n")
            self.log.flush()
        if not self.quiet:
            self.stream.write(line + "\n")
            self.stream.flush()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        pass


class JsonView:
    """JSON Lines on stdout for scripts: one object per event."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def on_event(self, event: Event) -> None:
        record = {"event": event.kind, "at": stamp(event.at), "run_id": event.run_id, **event.data}
        self.stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.stream.flush()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def close(self) -> None:
        pass


class LiveView:
    """A Rich live panel redrawn from the database about twice a second."""

    def __init__(self, console: Console, load: Callable[[], dict[str, Any]]):
        self.load = load
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self.live.start()
        self._drawn = 0.0

    def on_event(self, event: Event) -> None:
        self.refresh()

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._drawn >= 0.5:
            self.live.update(run_panel(self.load()), refresh=True)
            self._drawn = now

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.refresh()
            time.sleep(min(left, 0.25))

    def close(self) -> None:
        self.refresh(force=True)
        self.live.stop()


# -- tables --------------------------------------------------------------------------------------


def run_panel(view: dict[str, Any]) -> Panel:
    """The live status: counters, progress, calls in flight, last calls ended."""
    snap = view["status"]
    total = snap["total_leads"] or 1
    done = snap["completed"] + snap["failed"] + snap["needs_review"]
    counters = Table.grid(padding=(0, 2))
    counters.add_row(*[Text(f"{k.replace('_', ' ')}: {snap[k]}") for k in COUNTERS])
    parts: list[Any] = [
        counters,
        ProgressBar(total=total, completed=done, width=40),
        Text(f"{done}/{snap['total_leads']} done · concurrency {snap['concurrency']}"),
    ]
    if view.get("live"):
        parts.append(_calls_table("In flight", view["live"], ("name", "to", "status", "for")))
    if view.get("recent"):
        parts.append(_calls_table("Last ended", view["recent"], ("name", "to", "status", "dur")))
    title = f"run {snap['run_id']} · {snap['status']} · {snap['source']}"
    return Panel(Group(*parts), title=title, expand=False)


def _calls_table(title: str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="ellipsis", no_wrap=True)
    for row in rows:
        table.add_row(*[str(row.get(c) if row.get(c) is not None else "") for c in columns])
    return table


def status_table(snap: dict[str, Any]) -> Table:
    table = Table(title=f"run {snap['run_id']}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key in ("status", "source", *COUNTERS, "total_leads", "waiting_retry", "concurrency"):
        table.add_row(key.replace("_", " "), str(snap[key]))
    outcomes = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in snap["outcomes"].items() if v)
    table.add_row("outcomes", outcomes or "none yet")
    if snap.get("skipped_reasons"):
        reasons = ", ".join(f"{k} {v}" for k, v in snap["skipped_reasons"].items())
        table.add_row("skipped for", reasons)
    for key in ("created_at", "started_at", "finished_at", "error"):
        if snap.get(key):
            table.add_row(key.replace("_", " "), str(snap[key]))
    return table


def runs_table(runs: list[dict[str, Any]]) -> Table:
    table = Table(title="runs", title_justify="left")
    for column in ("run", "source", "created", "status", "progress", "answered"):
        table.add_column(column, overflow="ellipsis")
    for snap in runs:
        done = snap["completed"] + snap["failed"] + snap["needs_review"]
        table.add_row(
            str(snap["run_id"]),
            snap["campaign"] or snap["source"],
            snap["created_at"] or "",
            snap["status"],
            f"{done}/{snap['total_leads']}",
            str(snap["completed"]),
        )
    return table


def calls_table(page: dict[str, Any]) -> Table:
    pages = max(1, -(-page["total"] // page["page_size"]))
    table = Table(title=f"calls · page {page['page']} of {pages}", title_justify="left")
    columns = ("call_sid", "run_id", "lead_name", "to", "twilio_status", "outcome", "duration_s")
    for column in columns:
        table.add_column(column.replace("_", " "), overflow="ellipsis", no_wrap=True)
    for item in page["items"]:
        table.add_row(*[str(item[c]) if item[c] is not None else "" for c in columns])
    return table


def summary_line(snap: dict[str, Any], seconds: float | None = None) -> str:
    """The final summary on stdout."""
    outcomes = ", ".join(f"{v} {k.replace('_', '-')}" for k, v in snap["outcomes"].items() if v)
    skipped = ""
    if snap["skipped"]:
        reasons = ", ".join(f"{v} {k}" for k, v in snap["skipped_reasons"].items())
        skipped = f"; {snap['skipped']} skipped ({reasons})"
    took = f" in {seconds:.0f}s" if seconds is not None else ""
    left = f"; {snap['queued']} still queued" if snap["queued"] else ""
    return (
        f"run {snap['run_id']} {snap['status']}{took}: {snap['total_leads']} leads"
        f"{': ' + outcomes if outcomes else ''}{left}{skipped}"
    )
