"""How runs look: plain timestamped lines (pipes, cron), JSON Lines, and Rich tables.

Views receive events and plain dicts; they never decide anything about dialing.
"""

from __future__ import annotations

import json
import re
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from rich import box
from rich.cells import cell_len, set_cell_size
from rich.columns import Columns
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.constrain import Constrain
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from dialer_cli.models import Event

COUNTERS = ("queued", "in_progress", "completed", "failed", "skipped", "needs_review")
WAITS = ("waiting_retry", "waiting_hours")
LIVE_COUNTERS = (
    "queued in_progress answered busy no_answer failed canceled rejected skipped waiting_retry "
    "waiting_hours needs_review"
).split()
OPTIONAL_COUNTERS = ("canceled", "rejected", "waiting_hours", "needs_review")  # unless not zero
LABELS = {"in_progress": "in flight", "no_answer": "no-answer"}
LIVE_STATUSES = ("running", "stopping")
OUTCOME_STYLES = {"answered": "green", "busy": "yellow", "no-answer": "yellow", "failed": "red"}
OUTCOME_STYLES |= {"rejected": "red", "in-progress": "green"}
NAME_WIDTH = 24  # cells; names are cut to this before they are bidi-isolated
PANEL_WIDTH = 120  # the live panel stops growing here on wide terminals
IN_FLIGHT_ROWS = 12
WIDE = 118  # the calls table shows whole SIDs and the run from this width on
HIDDEN_DIGITS = re.compile(r"\d(?=\D*\d\D*\d)")  # every digit but the last two
BIDI_CONTROLS = frozenset("LRE RLE LRO RLO PDF LRI RLI FSI PDI".split())


def plural(n: int, noun: str) -> str:
    """`1 row`, `2 rows`: counts in messages read as English."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_SENTENCES: dict[str, Callable[[Event, str, dict[str, Any]], str]] = {
    "run-started": lambda e, who, d: f"run {e.run_id} started ({d.get('source', '')})",
    "call-placed": lambda e, who, d: f"call placed to {who}: {d['sid']} (attempt {d['attempt']})",
    "call-ended": lambda e, who, d: (
        f"call ended to {who}: {d['outcome']}"
        + (f", {d['duration']}s" if d.get("duration") else "")
        + (f"; retry at {stamp(float(d['retry_at']))}" if d.get("retry_at") else "")
    ),
    "call-rejected": lambda e, who, d: f"call rejected by Twilio for {who}: {d['error']}",
    "call-unknown": lambda e, who, d: (
        f"no answer to the create for {who} ({d['error']}); checking with Twilio"
    ),
    "call-adopted": lambda e, who, d: f"found the call to {who} at Twilio: {d['sid']}",
    "call-not-placed": lambda e, who, d: f"no call to {who} was placed; it goes back in the queue",
    "call-needs-review": lambda e, who, d: (
        f"several possible calls to {who}: needs review, never redialled"
    ),
    "create-retry": lambda e, who, d: (
        f"Twilio asked us to slow down ({d['error']}); next create in {d['retry_in']:.1f}s"
    ),
    "poll-retry": lambda e, who, d: (
        f"could not poll {who} ({d['error']}); retrying in {d['retry_in']}s"
    ),
    "cancel-retry": lambda e, who, d: f"could not end the call to {who} ({d['error']}); retrying",
    "call-canceling": lambda e, who, d: f"ending call to {who}: {d['sid']}",
    "voicemail-dropped": lambda e, who, d: (
        f"a machine answered {who} ({d['answered_by']}): voicemail message sent"
    ),
    "voicemail-not-dropped": lambda e, who, d: (
        f"voicemail message for {who} {d['result'].replace('_', ' ')}: {d['error']}"
    ),
    "waiting": lambda e, who, d: (
        f"waiting: the next call will be placed at {stamp(float(d['next_at']))}"
    ),
    "deadline": lambda e, who, d: "deadline reached: no new calls; waiting for calls in flight",
    "twilio-unreachable": lambda e, who, d: (
        f"Twilio unreachable{_for(float(d['for_s']))} ({d['error']}); retrying"
    ),
    "twilio-reachable": lambda e, who, d: (
        f"Twilio answers again, after {float(d['down_for']):.0f} s without an answer"
    ),
    "left-unsettled": lambda e, who, d: (
        f"Twilio unreachable ({d['error']}): stopping now; {d['in_flight']} calls in flight "
        f"are left for `dialer resume {e.run_id}` to settle"
    ),
    "run-finished": lambda e, who, d: f"run {e.run_id} {d['status']}",
    "prices-waiting": lambda e, who, d: (
        f"waiting up to {d['wait_s']:.0f}s for Twilio to price {plural(d['calls'], 'call')}"
    ),
}


def _for(seconds: float) -> str:
    return f" for {seconds:.0f} s" if seconds >= 1 else ""


def describe(event: Event) -> str:
    """One human sentence per event, for logs read the next morning."""
    d = event.data
    who = f"{d.get('to', '')}" + (f" ({d['name']})" if d.get("name") else "")
    sentence = _SENTENCES.get(event.kind)
    if sentence is None:
        return f"{event.kind} {json.dumps(d, ensure_ascii=False, default=str)}"
    return sentence(event, who, d)


class _PlainView:
    """What LineView and JsonView share: nothing to redraw, so waiting is plain sleeping."""

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def stopping(self, notice: str) -> None:
        """A stop was asked (Ctrl-C): say so on stderr, where progress goes."""
        sys.stderr.write(notice + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        pass


class LineView(_PlainView):
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


class JsonView(_PlainView):
    """JSON Lines on stdout for scripts: one object per event."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def on_event(self, event: Event) -> None:
        record = {"event": event.kind, "at": stamp(event.at), "run_id": event.run_id, **event.data}
        self.stream.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        self.stream.flush()


class LiveView:
    """A Rich live panel redrawn from the database about twice a second."""

    def __init__(self, console: Console, load: Callable[[], dict[str, Any]], mask: bool = False):
        self.load, self.mask = load, mask
        self.live = Live(console=console, auto_refresh=False, transient=False)
        self.live.start()
        self._drawn = 0.0
        self.notice: str | None = None
        self._down: dict[str, Any] | None = None  # the last twilio-unreachable event's data

    def on_event(self, event: Event) -> None:
        if event.kind == "twilio-unreachable":
            self._down = event.data
        elif event.kind == "twilio-reachable":
            self._down = None
        self.refresh(force=event.kind.startswith("twilio-"))

    def stopping(self, notice: str) -> None:
        """Called from a signal handler, so it only records: printing there could cut into a
        redraw half-way (a stray header line). The next redraw, within 0.25 s, shows the run as
        stopping and the notice inside the panel."""
        self.notice, self._drawn = notice, 0.0

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._drawn >= 0.5:
            view = self.load()
            if self.notice is not None:
                view["notice"] = self.notice
                if view["status"]["status"] == "running":
                    view["status"] = {**view["status"], "status": "stopping"}
            if self._down is not None:
                since = float(self._down["since"])
                view["unreachable"] = {"for_s": time.time() - since, "error": self._down["error"]}
            self.live.update(run_panel(view, mask=self.mask), refresh=True)
            self._drawn = now

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.refresh()
            time.sleep(min(left, 0.25))

    def close(self) -> None:
        self.refresh(force=True)
        self.live.stop()


# -- cells ---------------------------------------------------------------------------------------


def duration(seconds: float | None) -> str:
    """Short, fixed-shape durations (45s, 12m 04s, 1h 08m) so columns do not jitter."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    return f"{s // 60}m {s % 60:02d}s" if s < 3600 else f"{s // 3600}h {s % 3600 // 60:02d}m"


def mask_number(number: str | None) -> str:
    """+12125550167 -> +1 212 •••-••67: country code, area code and the last two digits stay,
    enough to tell calls apart on a shared screen or a screenshot, not enough to dial."""
    if not number:
        return ""
    import phonenumbers  # lazily: only masked views pay for its metadata

    try:
        pretty = phonenumbers.format_number(
            phonenumbers.parse(number), phonenumbers.PhoneNumberFormat.INTERNATIONAL
        )
        country, national = pretty.split(" ", 1)
        area, rest = re.split(r"[ \-]", national, maxsplit=1)
    except (phonenumbers.NumberParseException, ValueError):
        return HIDDEN_DIGITS.sub("•", number)
    return f"{country} {area} {HIDDEN_DIGITS.sub('•', rest)}"


def cell(text: str | None, width: int = NAME_WIDTH) -> str:
    """A name made safe for one table cell, whatever its script.

    Control characters become spaces and bidi controls go (an RLO would reverse the rest of the
    row). The name is cut to `width` *before* right-to-left text is wrapped in FSI…PDI
    (U+2068/U+2069), so Rich never cuts inside the isolate: a bidi terminal lays the name out
    within its cell, and skips it when guessing the line's direction. Both marks are zero
    columns wide for Rich and wcwidth, so alignment holds."""
    clean = "".join(
        " " if unicodedata.category(ch) == "Cc" else ch
        for ch in text or ""
        if unicodedata.bidirectional(ch) not in BIDI_CONTROLS
    )
    if cell_len(clean) > width:
        clean = set_cell_size(clean, width - 1) + "…"
    rtl = any(unicodedata.bidirectional(ch) in ("R", "AL") for ch in clean)
    return f"\u2068{clean}\u2069" if rtl else clean


class _Bar:
    """A progress bar that stays readable without colour: heavy line done, light line to go."""

    def __init__(self, fraction: float):
        self.fraction = min(max(fraction, 0.0), 1.0)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        done = round(width * self.fraction)
        heavy, light = ("#", "-") if options.ascii_only else ("━", "─")
        yield Text.assemble((heavy * done, "green"), (light * (width - done), "dim"))


# -- the live panel ------------------------------------------------------------------------------


def run_panel(view: dict[str, Any], mask: bool = False) -> RenderableType:
    """The live status: timing and ETA, progress, counters, calls in flight, last calls ended."""
    snap = view["status"]
    parts: list[RenderableType] = [_timing(view), _progress(snap), _counters(snap)]
    if view.get("notice"):
        parts.append(Text(view["notice"], style="yellow"))
    if down := view.get("unreachable"):
        alarm = f"Twilio unreachable for {duration(down['for_s'])} ({down['error']}); retrying"
        parts.insert(0, Text(alarm, style="bold red"))
    if snap.get("error"):
        parts.append(Text(f"error: {snap['error']}", style="red"))
    number = mask_number if mask else (lambda n: n or "")
    live, recent = view.get("live") or [], view.get("recent") or []
    names = [cell(r["name"]) for r in (*live[:IN_FLIGHT_ROWS], *recent)]
    width = max([cell_len(n) for n in names] + [4])  # both tables share their columns
    if live:
        rows = [(r["name"], number(r["to"]), r["status"], duration(r["age_s"])) for r in live]
        title = f"in flight ({len(live)})"
        parts += ["", _table(title, rows, ("status", "for"), IN_FLIGHT_ROWS, width)]
    if recent:
        rows = [(r["name"], number(r["to"]), r["outcome"], duration(r["talk_s"])) for r in recent]
        parts += ["", _table("last ended", rows, ("outcome", "talk"), len(rows), width)]
    title = (
        f"run {snap['run_id']} · {snap['status']} · {cell(snap['campaign'] or snap['source'], 60)}"
    )
    return Constrain(Panel(Group(*parts), title=title, title_align="left"), PANEL_WIDTH)


def _timing(view: dict[str, Any]) -> Text:
    snap = view["status"]
    parts = [f"elapsed {duration(view['elapsed_s'])}"]
    if view.get("eta_s") is not None:
        parts.append(f"ETA {duration(view['eta_s'])}")
    elif snap["status"] in LIVE_STATUSES:
        parts.append("ETA measuring")
    if view.get("mean_call_s"):
        parts.append(f"mean call {duration(view['mean_call_s'])}")
    parts.append(f"concurrency {snap['concurrency']}")
    if snap.get("next_window_at"):
        parts.append(f"calling hours open {snap['next_window_at'][11:16]}Z")
    return Text(" · ".join(parts))


def _progress(snap: dict[str, Any]) -> Table:
    total, done = snap["total_leads"], _done(snap)
    grid = Table.grid(expand=True, padding=(0, 1))
    grid.add_column(ratio=1)
    grid.add_column(no_wrap=True, justify="right")
    grid.add_row(
        _Bar(done / total if total else 1.0), f"{done}/{total} done {_percent(done, total)}"
    )
    return grid


def _counters(snap: dict[str, Any]) -> Columns:
    values = {**snap, **snap["outcomes"]}  # `failed` is the outcome here, not the job state
    shown = [k for k in LIVE_COUNTERS if values.get(k) or k not in OPTIONAL_COUNTERS]
    cells = [
        Text.assemble(f"{LABELS.get(k, k.replace('_', ' '))} ", (str(values.get(k, 0)), "bold"))
        for k in shown
    ]
    return Columns(cells, padding=(0, 2))


def _table(
    title: str, rows: list[tuple[str, ...]], last: tuple[str, str], limit: int, width: int
) -> Table:
    """Name, number and two short columns, fixed widths so consecutive tables line up."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
    table.show_edge, table.pad_edge = False, False
    table.add_column("name", no_wrap=True, width=width)
    table.add_column("number", no_wrap=True, width=16)
    table.add_column(last[0], no_wrap=True, width=11)
    table.add_column(last[1], no_wrap=True, width=7, justify="right")
    for name, number, status, seconds in rows[:limit]:
        table.add_row(cell(name), number, Text(status, OUTCOME_STYLES.get(status, "")), seconds)
    if len(rows) > limit:
        table.caption, table.caption_justify = f"… and {len(rows) - limit} more", "left"
    return table


def _percent(part: float | None, whole: float = 1.0) -> str:
    return f"{100 * part / whole:.0f}%" if part is not None and whole else ""


# -- one-shot tables -----------------------------------------------------------------------------


# The seed's JSON counters, named in the views for what they count: `failed` there is every
# lead whose call was not answered, while Twilio's `failed` outcome is one of those outcomes.
STATUS_LABELS = {"in_progress": "in flight", "completed": "answered", "failed": "not answered"}


def status_table(snap: dict[str, Any]) -> Table:
    table = Table(title=f"run {snap['run_id']}", show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for key in ("status", "source", *COUNTERS, "total_leads", *WAITS, "concurrency"):
        value = str(snap.get(key, 0))
        if key == "failed" and (why := _not_answered(snap["outcomes"])):
            value += f" ({why})"
        table.add_row(STATUS_LABELS.get(key, key.replace("_", " ")), value)
    outcomes = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in snap["outcomes"].items() if v)
    table.add_row("outcomes", outcomes or "none yet")
    if snap.get("skipped_reasons"):
        reasons = ", ".join(f"{k} {v}" for k, v in snap["skipped_reasons"].items())
        table.add_row("skipped for", reasons)
    stats = {k: v for k, v in (snap.get("stats") or {}).items() if v is not None}
    shown = _whole_percents({k: v for k, v in stats.items() if k.endswith("_rate")})
    for key, value in stats.items():
        table.add_row(key.replace("_", " "), shown.get(key) or _stat(key, value))
    for key in ("created_at", "started_at", "finished_at", "error"):
        if snap.get(key):
            table.add_row(key.replace("_", " "), str(snap[key]))
    return table


def _not_answered(outcomes: dict[str, int]) -> str:
    """What the not-answered counter is made of: `busy 3, no-answer 5`."""
    return ", ".join(
        f"{k.replace('_', '-')} {v}" for k, v in outcomes.items() if v and k != "answered"
    )


def _whole_percents(rates: dict[str, float]) -> dict[str, str]:
    """Rates that share a denominator, as whole percents that add up as the fractions do (largest
    remainder): 10/18, 3/18, 5/18 show 55%, 17%, 28% — never 101% between them."""
    total = round(100 * sum(rates.values()))
    floors = {k: int(100 * v) for k, v in rates.items()}
    by_remainder = sorted(rates, key=lambda k: 100 * rates[k] - floors[k], reverse=True)
    for key in by_remainder[: max(total - sum(floors.values()), 0)]:
        floors[key] += 1
    return {k: f"{v}%" for k, v in floors.items()}


def _stat(key: str, value: Any) -> str:
    if key == "cost":
        return cost_value(value)
    return _percent(value) if key.endswith(("_rate", "utilisation")) else f"{value:g}"


def answer_rate(snap: dict[str, Any]) -> float | None:
    """Calls answered / calls placed: from `stats` when the snapshot has it, else from the
    lead counters (same definition, counting each lead's final call)."""
    if (stats := snap.get("stats")) is not None:
        return stats.get("answer_rate")
    placed = sum(v for k, v in snap["outcomes"].items() if k != "rejected")
    return snap["outcomes"]["answered"] / placed if placed else None


def _answer_percent(snap: dict[str, Any]) -> str:
    """The answer rate as `status` shows it beside the other rates (the same whole percent)."""
    rates = {k: v for k, v in (snap.get("stats") or {}).items() if k.endswith("_rate")}
    if rates.get("answer_rate") is not None:
        return _whole_percents({k: v for k, v in rates.items() if v is not None})["answer_rate"]
    return _percent(answer_rate(snap))


def runs_table(runs: list[dict[str, Any]]) -> RenderableType:
    """One line per run; the campaign (or source) gets the width the other columns leave."""
    return _Fit(lambda width: _runs_table(runs, width))


def _runs_table(runs: list[dict[str, Any]], width: int) -> Table:
    header = ("run", "campaign/source", "created", "status", "progress", "answered")
    rows = [header] + [
        (
            str(snap["run_id"]),
            snap["campaign"] or snap["source"],
            (snap["created_at"] or "")[:16].replace("T", " "),
            snap["status"],
            f"{_done(snap)}/{snap['total_leads']} {_percent(_done(snap), snap['total_leads'])}",
            _answer_percent(snap),
        )
        for snap in runs
    ]
    others = sum(max(cell_len(row[i]) for row in rows) for i in (0, 2, 3, 4, 5))
    name_width = max(width - others - 3 * len(header) + 1, cell_len(header[1]))  # padding, rules
    table = Table(title="runs", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for i, column in enumerate(header):
        table.add_column(column, no_wrap=True, justify="right" if i in (0, 5) else "left")
    for row in rows[1:]:
        table.add_row(row[0], cell(row[1], name_width), *row[2:])
    return table


def _done(snap: dict[str, Any]) -> int:
    return int(snap["completed"] + snap["failed"] + snap["needs_review"])


def calls_table(page: dict[str, Any], mask: bool = False) -> RenderableType:
    """One page of calls; the caption says how to get the next one. Narrower than WIDE, the run
    column goes and SIDs are shortened (`--json` has them whole) so nothing else is cut."""
    return _Fit(lambda width: _calls_table(page, mask, wide=width >= WIDE))


def _calls_table(page: dict[str, Any], mask: bool, wide: bool) -> Table:
    pages = max(1, -(-page["total"] // page["page_size"]))
    table = Table(title="calls", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    columns = ("started", "run", "lead", "number", "outcome", "talk", "sid")
    for column in columns if wide else [c for c in columns if c != "run"]:
        table.add_column(column, no_wrap=True)
    for item in page["items"]:
        sid = item["call_sid"] or ""
        row = [
            (item["started_at"] or "")[0 if wide else 5 : 19 if wide else 16].replace("T", " "),
            str(item["run_id"]),
            cell(item["lead_name"], 20 if wide else 13),
            mask_number(item["to"]) if mask else item["to"],
            item["outcome"] or item["twilio_status"] or "",
            duration(item["duration_s"]) if item["duration_s"] else "",
            sid if wide or len(sid) < 12 else f"{sid[:2]}…{sid[-4:]}",
        ]
        table.add_row(*(row if wide else row[:1] + row[2:]))
    more = f" · next: --page {page['page'] + 1}" if page["page"] < pages else ""
    table.caption = f"{plural(page['total'], 'call')} · page {page['page']} of {pages}{more}"
    table.caption_justify = "left"
    return table


class _Fit:
    """A renderable built for the width it is given (a table that drops columns when narrow)."""

    def __init__(self, build: Callable[[int], RenderableType]):
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(options.max_width)


def cleanup_line(run_id: int, before: int, left: int, events: list[Event]) -> str:
    """What `cleanup-stuck` did to one run, in one line."""
    ended = Counter(str(e.data["outcome"]) for e in events if e.kind == "call-ended")
    parts = [f"{n} {outcome}" for outcome, n in ended.items()]
    for kind, what in (
        ("call-adopted", "found at Twilio"),
        ("call-not-placed", "never placed (queued again)"),
        ("call-needs-review", "need review"),
    ):
        if n := sum(e.kind == kind for e in events):
            parts.append(f"{n} {what}")
    done = f"settled {before - left} of {before} calls in flight"
    detail = f" ({', '.join(parts)})" if parts else ""
    rest = f"; {left} still in flight: `dialer resume {run_id}` goes on with them" if left else ""
    return f"run {run_id}: {done}{detail}{rest}"


def summary_line(
    snap: dict[str, Any], seconds: float | None = None, cost: dict[str, Any] | None = None
) -> str:
    """The final summary on stdout; with `cost` (report.cost), what the calls cost."""
    outcomes = ", ".join(f"{v} {k.replace('_', '-')}" for k, v in snap["outcomes"].items() if v)
    skipped = ""
    if snap["skipped"]:
        reasons = ", ".join(f"{v} {k}" for k, v in snap["skipped_reasons"].items())
        skipped = f"; {snap['skipped']} skipped ({reasons})"
    took = f" in {seconds:.0f}s" if seconds is not None else ""
    left = f"; {snap['queued']} still queued" if snap["queued"] else ""
    return (
        f"run {snap['run_id']} {snap['status']}{took}: {plural(snap['total_leads'], 'lead')}"
        f"{': ' + outcomes if outcomes else ''}{left}{skipped}{cost_text(cost)}"
    )


def cost_text(cost: dict[str, Any] | None) -> str:
    """`; cost 0.039 USD` for the summary line; nothing while no call has been charged."""
    if cost is None or (cost["unit"] is None and not cost["calls_without_price"]):
        return ""
    return f"; cost {cost_value(cost)}"


def cost_value(cost: dict[str, Any]) -> str:
    """`0.039 USD (2 calls without a price yet)`: stats.cost in words, to Twilio's precision."""
    amount = "unknown" if cost["amount"] is None else f"{cost['amount']:.5f}".rstrip("0")
    unit = f" {cost['unit']}" if cost["unit"] else ""
    missing = cost["calls_without_price"]
    without = f" ({plural(missing, 'call')} without a price yet)" if missing else ""
    return f"{amount.removesuffix('.')}{unit}{without}"
