"""What the views and reports show, read from the store: live data, report rows, statistics.

Everything here is a read: plain SELECTs on the store's connection, each its own implicit
transaction, so a `status` in another process never holds a lock the dialing process waits for.
Results are plain dicts and lists; how they look is render.py's business.
"""

from __future__ import annotations

import csv
import json
import math
import sqlite3
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal
from typing import Any, TextIO

from dialer_cli import runner
from dialer_cli.models import OUTCOME_OF_STATUS, TWILIO_TERMINAL, JobState, Run, RunStatus
from dialer_cli.store import LIVE, TERMINAL, Store
from dialer_cli.voicemail import MACHINE

ETA_AFTER = 3  # ended calls needed before an ETA means anything
ETA_WINDOW = 200  # the mean call length is taken over this many latest ended calls
PAGE = 2000  # report rows read per query: bounded memory, no read transaction held for long
REPORT_COLUMNS = tuple(
    "e164 outcome attempts call_sid answered_by voicemail ring_s talk_s error_code "
    "error_message first_attempt_at last_attempt_at price price_unit".split()
)


# -- the live view -------------------------------------------------------------------------------


def live_data(store: Store, run_id: int, now: float) -> dict[str, Any]:
    """Everything the live panel draws, so render.py never queries the database.

    Every query is indexed and bounded (in-flight jobs, the latest calls by id), so redrawing
    twice a second costs the same for 100 leads as for a million.
    """
    snap = runner.snapshot(store, run_id, now)
    run_ = store.get_run(run_id)
    sample = _recent_call_lengths(store, run_id)
    mean = sum(sample) / len(sample) if sample else None
    running = snap["status"] in (RunStatus.RUNNING, RunStatus.STOPPING)
    # Leads waiting for calling hours are not in the ETA: the panel shows when their window opens.
    remaining = snap["queued"] - snap.get("waiting_hours", 0) + snap["in_progress"]
    return {
        "status": snap,
        "elapsed_s": _elapsed(run_, now, running),
        "ended_calls": len(sample),
        "mean_call_s": mean,
        "eta_s": eta(remaining, snap["concurrency"], mean, len(sample)) if running else None,
        "live": in_flight(store, run_id, now),
        "recent": recent(store, run_id),
    }


def eta(remaining: int, concurrency: int, mean_call_s: float | None, ended: int) -> float | None:
    """Seconds left: the remaining leads in waves of N, each wave one mean call long.

    100 leads, 2-minute calls, N=3: ceil(100/3) = 34 waves x 2 min = 68 min. None until
    ETA_AFTER calls have ended, because a mean of one or two calls is mostly noise.
    """
    if mean_call_s is None or ended < ETA_AFTER:
        return None
    return math.ceil(remaining / max(concurrency, 1)) * mean_call_s


def _recent_call_lengths(store: Store, run_id: int) -> list[float]:
    """Claim-to-end seconds of the latest ended calls that reached Twilio (a recent window, so
    the ETA follows the campaign as answer rates drift during the day)."""
    rows = store.read(
        "SELECT ended_at - claimed_at FROM calls WHERE run_id=? AND call_sid IS NOT NULL "
        "AND ended_at IS NOT NULL ORDER BY id DESC LIMIT ?",
        (run_id, ETA_WINDOW),
    )
    return [max(float(r[0]), 0.0) for r in rows]


def _elapsed(run_: Run, now: float, running: bool) -> float:
    """Seconds from the run's first start to its end, or to now while it runs (a resumed run
    counts the pause too: it is wall-clock campaign time)."""
    if run_.started_at is None:
        return 0.0
    end = now if running or run_.finished_at is None else run_.finished_at
    return max(end - run_.started_at, 0.0)


def in_flight(store: Store, run_id: int, now: float) -> list[dict[str, Any]]:
    """Jobs holding a slot, in lead order (rows stay put between redraws), with how long each
    has been in its current status (jobs.status_at moves whenever the status changes)."""
    rows = store.read(
        f"SELECT name, e164, state, twilio_status, status_at, updated_at, attempts FROM jobs "
        f"WHERE run_id=? AND state IN {LIVE} ORDER BY id",
        (run_id,),
    )
    return [
        {
            "name": r["name"],
            "to": r["e164"],
            "status": r["twilio_status"] or r["state"],
            "age_s": max(now - (r["status_at"] or r["updated_at"] or now), 0.0),
            "attempt": r["attempts"],
        }
        for r in rows
    ]


def recent(store: Store, run_id: int, limit: int = 5) -> list[dict[str, Any]]:
    """The last calls that ended, newest first. Walks the (run_id, id) index backwards instead
    of sorting every call by ended_at, then orders the few it read by ended_at."""
    rows = store.read(
        "SELECT j.name, c.to_number AS 'to', c.twilio_status, c.result, c.duration_s, "
        "c.ended_at, c.error_code FROM calls c JOIN jobs j ON j.id = c.job_id "
        "WHERE c.run_id=? AND c.ended_at IS NOT NULL "
        "AND (c.call_sid IS NOT NULL OR c.result='rejected') ORDER BY c.id DESC LIMIT ?",
        (run_id, limit * 4),
    )
    latest = sorted(rows, key=lambda r: r["ended_at"], reverse=True)[:limit]
    return [
        {
            "name": r["name"],
            "to": r["to"],
            "outcome": call_outcome(r["twilio_status"], r["result"]),
            "talk_s": r["duration_s"] if r["twilio_status"] == "completed" else None,
            "ended_at": r["ended_at"],
            "error_code": r["error_code"],
        }
        for r in latest
    ]


def call_outcome(twilio_status: str | None, result: str) -> str:
    if result == "rejected":
        return "rejected"
    outcome = OUTCOME_OF_STATUS.get(twilio_status or "")
    return outcome.value if outcome else (twilio_status or result)


# -- campaign statistics -------------------------------------------------------------------------


def status_object(store: Store, run_id: int, now: float) -> dict[str, Any]:
    """The status JSON object with its `stats`, for `status --json` and `runs`.

    Kept out of runner.snapshot on purpose: the live view loads a snapshot twice a second, and
    statistics scan every call of the run (about 0.15 s at a million calls).
    """
    return {**runner.snapshot(store, run_id, now), "stats": stats(store, run_id, now)}


def stats(store: Store, run_id: int, now: float) -> dict[str, Any]:
    """Campaign statistics from the call records, not the counters (a retried lead places
    several calls; counters count leads).

    A call *placed* is a calls row that reached a terminal Twilio status (completed, busy,
    no-answer, failed, canceled). twilio_status is only ever written together with a SID, so
    these are exactly the calls Twilio created and finished; creates Twilio refused, attempts
    that never reached it and calls still live are not placed. `answer_rate`, `busy_rate`,
    `no_answer_rate`, `failed_rate` are fractions of calls placed (canceled calls count only in
    the denominator); None before the first call is placed. `machine_rate` is the fraction of
    calls placed that AMD said a machine answered (None without call.machine_detection). Talk
    figures use duration_s of the answered (`completed`) calls. `calls_per_hour` and
    `utilisation` use the run's elapsed time, from its first start to its end (or `now` while
    unfinished); `utilisation` is the time
    attempts held a slot (claim to end, over every ended attempt; Twilio's end times have
    one-second resolution, so a sub-second attempt counts 0, never less) / (N x elapsed), in
    [0, 1].

    Two aggregate queries over the index calls(run_id, twilio_status, duration_s, claimed_at,
    ended_at): one GROUP BY, one median seek; a third counts machines when AMD was asked for.
    """
    rows = store.read(
        "SELECT twilio_status AS status, count(*) AS n, count(duration_s) AS timed, "
        "total(duration_s) AS talk, total(max(ended_at - claimed_at, 0)) AS held "
        "FROM calls WHERE run_id=? GROUP BY twilio_status",
        (run_id,),
    )
    by_status = {r["status"]: r for r in rows}
    placed = sum(r["n"] for r in rows if r["status"] in TWILIO_TERMINAL)
    answered = by_status.get("completed")
    timed = answered["timed"] if answered else 0
    talk = answered["talk"] if answered else 0.0
    run_ = store.get_run(run_id)
    hours = _elapsed(run_, now, run_.status in (RunStatus.RUNNING, RunStatus.STOPPING)) / 3600

    def rate(status: str) -> float | None:
        n = by_status[status]["n"] if status in by_status else 0
        return round(n / placed, 4) if placed else None

    slots = run_.concurrency * hours * 3600
    return {
        "calls_placed": placed,
        "answer_rate": rate("completed"),
        "busy_rate": rate("busy"),
        "no_answer_rate": rate("no-answer"),
        "failed_rate": rate("failed"),
        "machine_rate": _machine_rate(store, run_, placed),
        "mean_talk_s": round(talk / timed, 1) if timed else None,
        "median_talk_s": _median_talk(store, run_id, timed),
        "talk_minutes": round(talk / 60, 2),
        "calls_per_hour": round(placed / (hours * _speed(run_)), 1) if hours else None,
        "utilisation": round(min(sum(r["held"] for r in rows) / slots, 1.0), 3) if slots else None,
        "cost": cost(store, run_id),
    }


def cost(store: Store, run_id: int) -> dict[str, Any]:
    """What the run's calls cost so far: `amount` is the sum of Twilio's prices with the sign
    flipped (Twilio writes a charge as a negative price), in `unit` (None before the first
    price; several currencies, never seen on one account, give None and the units joined);
    `calls_without_price` counts the answered calls whose price Twilio has not given yet.
    Only answered calls are charged: one that never connected costs nothing.

    Two reads of partial indexes (calls_priced covers the sum, calls_unpriced the count), so
    neither visits the table.
    """
    rows = store.read(
        "SELECT price_unit AS unit, total(CAST(price AS REAL)) AS amount FROM calls "
        "WHERE run_id=? AND price IS NOT NULL GROUP BY price_unit",
        (run_id,),
    )
    missing = store.read(
        "SELECT count(*) FROM calls INDEXED BY calls_unpriced WHERE run_id=? "
        "AND twilio_status='completed' AND price IS NULL",
        (run_id,),
    )[0][0]
    units = sorted(r["unit"] or "" for r in rows)
    amount = round(-sum(r["amount"] for r in rows), 5) or 0.0
    return {
        "amount": amount if len(units) <= 1 else None,
        "unit": ",".join(units) or None,
        "calls_without_price": int(missing),
    }


def _machine_rate(store: Store, run_: Run, placed: int) -> float | None:
    """Calls placed that AMD said a machine answered, over calls placed. None when the run
    did not ask for AMD (answered_by is then always empty: nothing is known) or placed none."""
    call = run_.settings.get("call")
    if not placed or not isinstance(call, dict) or not call.get("machine_detection"):
        return None
    machines = ",".join("?" * len(MACHINE))
    row = store.read(
        f"SELECT count(*) FROM calls WHERE run_id=? AND answered_by IN ({machines}) "
        f"AND twilio_status IN {TERMINAL}",
        (run_.id, *sorted(MACHINE)),
    )[0]
    return round(row[0] / placed, 4)


def _speed(run_: Run) -> float:
    """How much faster than ours a simulated run's clock ran: its talk times are simulated
    seconds, so its calls per hour are counted in simulated hours too (never a mix)."""
    return float(run_.settings.get("sim_speed") or 1.0) if run_.simulated else 1.0


def _median_talk(store: Store, run_id: int, n: int) -> float | None:
    """Seek to the middle of the (run_id, 'completed', duration_s) index range: O(n/2) index
    steps and no sort, instead of reading every duration into Python."""
    if n == 0:
        return None
    rows = store.read(
        "SELECT duration_s FROM calls WHERE run_id=? AND twilio_status='completed' "
        "AND duration_s IS NOT NULL ORDER BY duration_s LIMIT ? OFFSET ?",
        (run_id, 2 - n % 2, (n - 1) // 2),
    )
    return sum(r[0] for r in rows) / len(rows)


# -- the per-lead report -------------------------------------------------------------------------


def report_rows(store: Store, run_id: int, now: float | None = None) -> Iterator[dict[str, Any]]:
    """One row per lead in input order: the lead's own columns, then REPORT_COLUMNS.

    The run is checked now (an unknown run is bad input before any output file is opened);
    the rows come from a generator reading PAGE jobs at a time by keyset (jobs.id), so a
    million-lead run streams in bounded memory and no read transaction stays open throughout.
    """
    store.get_run(run_id)
    return _rows(store, run_id, time.time() if now is None else now)


def _rows(store: Store, run_id: int, now: float) -> Iterator[dict[str, Any]]:
    after = 0
    while jobs := store.read(  # NOT INDEXED: walk the rowid, no sort
        "SELECT id, fields, e164, state, outcome, skip_reason, skip_detail, attempts, next_at, "
        "wait, call_sid, error_code, error_message FROM jobs NOT INDEXED "
        "WHERE run_id=? AND id>? ORDER BY id LIMIT ?",
        (run_id, after, PAGE),
    ):
        calls = _calls_by_job(store, jobs[0]["id"], jobs[-1]["id"])
        for job in jobs:
            yield _report_row(job, calls.get(job["id"], []), now)
        after = jobs[-1]["id"]


def _calls_by_job(store: Store, first: int, last: int) -> dict[int, list[sqlite3.Row]]:
    rows = store.read(
        "SELECT job_id, claimed_at, ended_at, duration_s, answered_by, voicemail, call_sid, "
        "twilio_status, error_code, error_message, price, price_unit FROM calls "
        "WHERE job_id BETWEEN ? AND ? "
        "ORDER BY job_id, id",
        (first, last),
    )
    out: dict[int, list[sqlite3.Row]] = {}
    for row in rows:
        out.setdefault(row["job_id"], []).append(row)
    return out


def _report_row(job: sqlite3.Row, calls: list[sqlite3.Row], now: float) -> dict[str, Any]:
    placed = [c for c in calls if c["call_sid"]]
    last = placed[-1] if placed else None
    answered = [c for c in placed if c["twilio_status"] == "completed"]
    claims = [c["claimed_at"] for c in calls]
    fields: dict[str, Any] = json.loads(job["fields"])
    row = {_lead_key(k, fields): v for k, v in fields.items()}
    row.update(
        e164=job["e164"] or _duplicated(job),
        outcome=lead_outcome(dict(job), now),
        attempts=job["attempts"],
        call_sid=last["call_sid"] if last else job["call_sid"],
        answered_by=last["answered_by"] if last else None,
        voicemail=last["voicemail"] if last else None,
        ring_s=ring_seconds(last) if last else None,
        talk_s=answered[-1]["duration_s"] if answered else None,
        error_code=_error(job, calls, "error_code"),
        error_message=_error(job, calls, "error_message"),
        first_attempt_at=runner.iso(min(claims)) if claims else None,
        last_attempt_at=runner.iso(max(claims)) if claims else None,
        **_price(placed),
    )
    return row


def _price(placed: list[sqlite3.Row]) -> dict[str, str | None]:
    """What the lead's calls cost, as Twilio writes prices (a retried lead adds its calls up);
    empty while no call of it has a price, and for leads never connected (not charged)."""
    priced = [c for c in placed if c["price"] is not None]
    if not priced:
        return {"price": None, "price_unit": None}
    total = sum((Decimal(c["price"]) for c in priced), Decimal(0))
    return {"price": str(total), "price_unit": priced[-1]["price_unit"]}


def _duplicated(job: sqlite3.Row) -> str:
    """A duplicate row has no number of its own to dial; show the one it repeats."""
    if job["skip_reason"] == "duplicate" and job["skip_detail"]:
        return str(job["skip_detail"]).split(" ", 1)[0]
    return ""


def _error(job: sqlite3.Row, calls: list[sqlite3.Row], key: str) -> Any:
    """The job's own error (rejections, lost SIDs) wins over its last call's."""
    return job[key] if job[key] is not None or not calls else calls[-1][key]


def _lead_key(key: str, fields: dict[str, Any]) -> str:
    """A lead column named like one of ours gets `lead_` in front (again, if that clashes too)."""
    if key not in REPORT_COLUMNS:
        return key
    new = f"lead_{key}"
    while new in REPORT_COLUMNS or new in fields:
        new = f"lead_{new}"
    return new


def ring_seconds(call: sqlite3.Row | dict[str, Any]) -> int | None:
    """Seconds from our claim until the call was answered, or, never answered, until it ended.

    Twilio's start_time is when the call began dialing, not when it was answered; the answer
    is end_time - duration. Twilio's times have one-second resolution and its clock is not
    ours, hence whole seconds and never below zero.
    """
    if call["ended_at"] is None:
        return None
    answered_at = call["ended_at"] - (call["duration_s"] or 0)
    return max(round(answered_at - call["claimed_at"]), 0)


def lead_outcome(job: dict[str, Any], now: float) -> str:
    """Where a lead stands, in one word a spreadsheet can filter on.

    A queued lead with a future next_at waits, for the reason jobs.wait records: calling hours
    (`waiting_hours`), or a retry or a throttled create (`waiting_retry`). Without a recorded
    reason, attempts decide: attempted before means a retry.
    """
    state = job["state"]
    if state == JobState.SKIPPED:
        return f"skipped:{job['skip_reason']}"
    if state in (JobState.NEEDS_REVIEW, JobState.REVIEWING):
        return "needs_review"
    if state == JobState.COMPLETED:
        return "answered"
    if state == JobState.FAILED:
        return job["outcome"] or "failed"
    if state == JobState.QUEUED and (job["next_at"] or 0) > now:
        wait = job.get("wait") or ("retry" if job["attempts"] else "hours")
        return "waiting_hours" if wait == "hours" else "waiting_retry"
    return str(state)


def write_csv(rows: Iterable[dict[str, Any]], stream: TextIO, bom: bool = False) -> int:
    """CSV a spreadsheet opens cleanly: UTF-8 (with a BOM for Excel when asked), one header
    taken from the first row, empty cells for None. Returns the number of rows written."""
    if bom:
        stream.write("\ufeff")
    writer = csv.writer(stream)
    header: list[str] | None = None
    count = 0
    for row in rows:
        if header is None:
            header = list(row)
            writer.writerow(header)
        writer.writerow(["" if row.get(k) is None else row[k] for k in header])
        count += 1
    if header is None:
        writer.writerow(REPORT_COLUMNS)
    return count


def write_json(rows: Iterable[dict[str, Any]], stream: TextIO) -> int:
    """A JSON array written one object at a time, so memory stays flat however long the run."""
    count = 0
    for row in rows:
        stream.write(("[\n" if count == 0 else ",\n") + json.dumps(row, ensure_ascii=False))
        count += 1
    stream.write("\n]\n" if count else "[]\n")
    return count
