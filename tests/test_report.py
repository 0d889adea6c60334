"""Reports and statistics, from runs the real engine played against the simulator (or, for the
arithmetic, call records written by hand so the expected numbers can be worked out on paper)."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
import time
from pathlib import Path

import pytest

from dialer_cli import report
from dialer_cli.errors import InputError
from dialer_cli.models import Lead, RunStatus
from dialer_cli.simulator import CallPlan
from dialer_cli.store import Store
from tests.conftest import T0, make_leads, new_run

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
STATS_INDEX = (
    "CREATE INDEX IF NOT EXISTS calls_run_status "
    "ON calls(run_id, twilio_status, duration_s, claimed_at, ended_at)"
)
# (name, e164, plan or skip reason): one lead per outcome, in input order
EVERY_OUTCOME = [
    ("Ada", "+12125550100", CallPlan("completed", 0.5, 2.0, 10.0, answered_by="human")),
    ("Bob", "+12125550101", CallPlan("busy", 0.5, 2.0)),
    ("Cy", "+12125550102", CallPlan("no-answer", 0.5, 2.0)),
    ("Di", "+12125550103", CallPlan("failed", 0.5, 2.0)),
    ("Ed", "+15005550001", None),  # Twilio's magic number: the create is rejected with 21217
    ("Fay", None, "invalid-number"),
    ("Gus", "+12125550100", "duplicate"),
    ("דנה לוי", "+12125550104", CallPlan("no-answer", 0.5, 1000.0)),  # canceled while ringing
    ("Hal", "+12125550105", None),
    ("Ivy", "+12125550106", None),
]


def every_outcome_leads() -> list[Lead]:
    leads = []
    for i, (name, e164, plan) in enumerate(EVERY_OUTCOME):
        fields = {"name": name, "phone": e164 or "12", "outcome": "prior"}  # clashes with ours
        skip = plan if isinstance(plan, str) else None
        e164 = None if skip == "invalid-number" else e164
        detail = "from the test" if skip else None
        leads.append(Lead(i + 2, fields["phone"], e164, fields, skip, detail))
    return leads


@pytest.fixture
def every_outcome_run(store, sim, harness):
    """Concurrency 1, so the ringing call to be canceled keeps the last two leads queued."""
    plans = {e164: plan for _, e164, plan in EVERY_OUTCOME if isinstance(plan, CallPlan)}
    sim._plan = lambda to, nth: plans.get(to, CallPlan("completed"))
    run_id = new_run(store, every_outcome_leads(), concurrency=1)
    h = harness(run_id)
    while not store.read(
        "SELECT 1 FROM jobs WHERE run_id=? AND e164=? AND twilio_status='ringing'",
        (run_id, "+12125550104"),
    ):
        h.tick()
        h.clock.advance(1.0)
    store.request_stop(run_id, cancel=True, driver_alive=True, now=h.clock.now)
    assert h.run_until_done(step=1.0) == RunStatus.STOPPED
    return run_id, h.clock.now


def test_report_has_one_row_per_lead_in_input_order_with_every_outcome(store, every_outcome_run):
    run_id, now = every_outcome_run
    rows = list(report.report_rows(store, run_id, now))
    assert [r["name"] for r in rows] == [name for name, _, _ in EVERY_OUTCOME]
    assert list(rows[0]) == ["name", "phone", "lead_outcome", *report.REPORT_COLUMNS]
    assert [r["outcome"] for r in rows] == [
        "answered",
        "busy",
        "no-answer",
        "failed",
        "rejected",
        "skipped:invalid-number",
        "skipped:duplicate",
        "canceled",
        "queued",
        "queued",
    ]
    assert [r["attempts"] for r in rows] == [1, 1, 1, 1, 1, 0, 0, 1, 0, 0]
    assert {r["lead_outcome"] for r in rows} == {"prior"}
    ada, bob, _, _, ed, fay, gus, dana, hal, _ = rows
    assert ada["answered_by"] == "human" and ada["talk_s"] == 10
    assert ada["ring_s"] == 2  # claim to pickup: 0.5 s queued + 2 s ringing, in whole seconds
    assert ada["call_sid"].startswith("CA") and ada["error_code"] is None
    assert bob["talk_s"] is None and bob["answered_by"] is None and bob["ring_s"] == 2
    assert ed["call_sid"] is None and ed["error_code"] == 21217 and ed["error_message"]
    assert ed["e164"] == "+15005550001" and fay["e164"] == "" and gus["e164"] == "+12125550100"
    assert dana["call_sid"].startswith("CA") and dana["talk_s"] is None
    for row in (fay, gus, hal):
        assert row["call_sid"] is None and row["first_attempt_at"] is None
    assert ISO.match(ada["first_attempt_at"]) and ISO.match(dana["last_attempt_at"])
    assert ada["first_attempt_at"] < dana["last_attempt_at"]


def test_csv_opens_cleanly_in_a_spreadsheet(store, every_outcome_run):
    run_id, now = every_outcome_run
    out = io.StringIO(newline="")
    assert report.write_csv(report.report_rows(store, run_id, now), out, bom=True) == 10
    text = out.getvalue()
    assert text.startswith("\ufeffname,phone,lead_outcome,e164,outcome,")
    table = list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))
    assert len(table) == 10 and table[7]["name"] == "דנה לוי"
    assert table[5]["call_sid"] == "" and table[5]["outcome"] == "skipped:invalid-number"
    assert table[0]["talk_s"] == "10" and ISO.match(table[0]["last_attempt_at"])
    assert not report.write_csv([], out2 := io.StringIO()) and out2.getvalue().startswith("e164,")


def test_json_report_is_one_streamed_array_with_the_same_keys(store, every_outcome_run):
    run_id, now = every_outcome_run
    out = io.StringIO()
    report.write_json(report.report_rows(store, run_id, now), out)
    assert json.loads(out.getvalue()) == list(report.report_rows(store, run_id, now))
    report.write_json(iter(()), empty := io.StringIO())
    assert json.loads(empty.getvalue()) == []


def test_an_unknown_run_fails_before_any_row_is_written(store):
    with pytest.raises(InputError, match="no run 9"):
        report.report_rows(store, 9)


def test_report_streams_in_pages(store, monkeypatch):
    monkeypatch.setattr(report, "PAGE", 3)
    run_id = new_run(store, make_leads(10))
    rows = report.report_rows(store, run_id, T0)
    assert next(rows)["name"] == "Lead 0"  # a generator: nothing is read before it is asked for
    assert [r["name"] for r in rows] == [f"Lead {i}" for i in range(1, 10)]


@pytest.mark.parametrize(
    ("state", "extra", "expected"),
    [
        ("queued", {"attempts": 1, "next_at": T0 + 60}, "waiting_retry"),
        ("queued", {"attempts": 0, "next_at": T0 + 60}, "waiting_hours"),
        ("queued", {"attempts": 1, "next_at": T0 + 60, "wait": "hours"}, "waiting_hours"),
        ("queued", {"attempts": 0, "next_at": T0 + 60, "wait": "throttle"}, "waiting_retry"),
        ("queued", {"attempts": 1, "next_at": T0 - 60}, "queued"),
        ("dialing", {}, "dialing"),
        ("calling", {}, "calling"),
        ("reviewing", {}, "needs_review"),
        ("needs_review", {"outcome": "answered"}, "needs_review"),
        ("failed", {"outcome": "rejected"}, "rejected"),
    ],
)
def test_lead_outcome_of_every_state(state, extra, expected):
    job = {"state": state, "outcome": None, "attempts": 0, "next_at": None, **extra}
    assert report.lead_outcome(job, T0) == expected


# -- statistics ----------------------------------------------------------------------------------


def add_call(
    store: Store,
    run_id: int,
    job_id: int,
    claimed: float,
    ended: float | None,
    status: str | None,
    duration: int | None = None,
) -> None:
    sid = None if status is None else f"CA{claimed:.0f}"
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO calls (token, job_id, run_id, to_number, from_number, claimed_at, "
            "result, call_sid, twilio_status, ended_at, duration_s) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                f"t{claimed}",
                job_id,
                run_id,
                "+12125550100",
                "+15005550006",
                T0 + claimed,
                "created" if sid else "rejected",
                sid,
                status,
                None if ended is None else T0 + ended,
                duration,
            ),
        )


def test_stats_match_a_hand_computed_example(store):
    run_id = new_run(store, make_leads(9), concurrency=2)
    store.take_over(run_id, "me", 1, "h", T0)  # started at T0
    store.set_status(run_id, RunStatus.COMPLETED, T0 + 3600)  # one hour long
    jobs = [r[0] for r in store.read("SELECT id FROM jobs WHERE run_id=?", (run_id,))]
    for job, (claimed, ended, status, talk) in zip(
        jobs,
        [
            (0, 100, "completed", 60),
            (100, 400, "completed", 240),
            (200, 300, "completed", 30),
            (400, 420, "busy", None),
            (500, 530, "no-answer", None),
            (600, 601, "failed", None),
            (700, 760, "canceled", None),
            (800, 800, None, None),  # rejected: no SID, so not placed; held its slot 0 s
            (900, None, "in-progress", None),  # still live: not placed, not ended
        ],
        strict=True,
    ):
        add_call(store, run_id, job, claimed, ended, status, talk)
    assert report.status_object(store, run_id, T0)["stats"] == report.stats(store, run_id, T0)
    assert report.stats(store, run_id, T0 + 9999) == {
        "calls_placed": 7,
        "answer_rate": round(3 / 7, 4),
        "busy_rate": round(1 / 7, 4),
        "no_answer_rate": round(1 / 7, 4),
        "failed_rate": round(1 / 7, 4),
        "machine_rate": None,  # no AMD asked for: unknowable
        "mean_talk_s": 110.0,  # (60 + 240 + 30) / 3
        "median_talk_s": 60,
        "talk_minutes": 5.5,  # 330 s
        "calls_per_hour": 7.0,
        # claim-to-end of every ended attempt: 100+300+100+20+30+1+60+0 = 611 s of 2 x 3600
        "utilisation": round(611 / 7200, 3),
        # Twilio has priced none of the three answered calls yet; the others are never charged
        "cost": {"amount": 0.0, "unit": None, "calls_without_price": 3},
    }


def test_stats_median_of_an_even_count_and_an_empty_run(store):
    run_id = new_run(store, make_leads(4), concurrency=1)
    store.take_over(run_id, "me", 1, "h", T0)
    assert report.stats(store, run_id, T0)["answer_rate"] is None
    assert report.stats(store, run_id, T0)["utilisation"] is None  # no time has passed
    jobs = [r[0] for r in store.read("SELECT id FROM jobs WHERE run_id=?", (run_id,))]
    for i, (job, talk) in enumerate(zip(jobs, (40, 10, 30, 20), strict=True)):
        add_call(store, run_id, job, i * 100, i * 100 + talk, "completed", talk)
    # Twilio's end time is whole seconds: a sub-second call can seem to end before its claim
    add_call(store, run_id, jobs[0], 399.5, 399, "busy")
    stats = report.stats(store, run_id, T0 + 400)  # still running: elapsed is up to now
    assert stats["median_talk_s"] == 25 and stats["answer_rate"] == 0.8
    assert stats["calls_per_hour"] == 45.0 and stats["utilisation"] == 0.25  # 100 s of 400


# -- the live view's data ------------------------------------------------------------------------


def test_live_data_has_ages_recent_outcomes_and_an_eta_after_three_calls(store, sim, harness):
    h = harness(new_run(store, make_leads(10), concurrency=3))
    h.tick()
    h.clock.advance(4)
    first = report.live_data(store, h.dialer.run_id, h.clock.now)
    assert [c["age_s"] for c in first["live"]] == [4, 4, 4] and first["eta_s"] is None
    assert first["recent"] == [] and first["elapsed_s"] == 4
    while len(report.recent(store, h.dialer.run_id)) < 3:
        h.tick()
        h.clock.advance(1)
    view = report.live_data(store, h.dialer.run_id, h.clock.now)
    assert view["ended_calls"] == 3 and view["mean_call_s"] == pytest.approx(12, abs=1)
    assert view["eta_s"] == pytest.approx(3 * view["mean_call_s"])  # 7 left in 3 slots: 3 waves
    assert {r["outcome"] for r in view["recent"]} == {"answered"}
    assert {r["talk_s"] for r in view["recent"]} == {10}


def test_eta_is_remaining_waves_times_the_mean_call():
    assert report.eta(100, 3, 120.0, ended=5) == 68 * 60  # the seed's estimate: 34 waves of 2 min
    assert report.eta(100, 3, 120.0, ended=2) is None
    assert report.eta(0, 3, 120.0, ended=9) == 0


# -- a million leads -----------------------------------------------------------------------------


def million_lead_db(path: Path, n: int = 1_000_000) -> Path:
    """A finished run of n leads with one call each, written in SQL (the engine would take
    hours); two leads in three answered."""
    store = Store.open(path)
    store.close()
    conn = sqlite3.connect(path)
    conn.executescript(f"""
        {STATS_INDEX};
        INSERT INTO runs (source, source_key, status, concurrency, target, created_at,
          started_at, finished_at) VALUES ('big.csv', 'big', 'completed', 3, 'simulated',
          {T0}, {T0}, {T0 + 3600 * 24 * 30});
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {n})
        INSERT INTO jobs (run_id, line, phone, e164, name, fields, state, outcome, attempts)
        SELECT 1, i + 1, '+1' || (2120000000 + i), '+1' || (2120000000 + i), 'Lead ' || i,
          json_object('name', 'Lead ' || i), CASE WHEN i % 3 THEN 'completed' ELSE 'failed' END,
          CASE WHEN i % 3 THEN 'answered' ELSE 'busy' END, 1 FROM n;
        INSERT INTO calls (token, job_id, run_id, to_number, from_number, claimed_at, result,
          call_sid, twilio_status, ended_at, duration_s)
        SELECT 't' || id, id, 1, e164, '+15005550006', {T0} + id * 2.5, 'created', 'CA' || id,
          CASE outcome WHEN 'busy' THEN 'busy' ELSE 'completed' END, {T0} + id * 2.5 + 40,
          CASE outcome WHEN 'busy' THEN NULL ELSE 10 + (id * 7919) % 300 END FROM jobs;
    """)
    conn.commit()
    conn.close()
    return path


def query_plans(store: Store, action) -> dict[str, str]:
    """The SELECTs an action ran (bound values expanded) and SQLite's plan for each."""
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    try:
        action()
    finally:
        store.conn.set_trace_callback(None)
    selects = {sql for sql in seen if sql.lstrip().upper().startswith("SELECT")}
    return {
        sql: " / ".join(r[3] for r in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
        for sql in selects
    }


@pytest.mark.slow
def test_stats_live_data_and_report_of_a_million_leads_are_fast(tmp_path):
    store = Store.open(million_lead_db(tmp_path / "big.db"), readonly=True)
    for _ in range(2):  # the second pass is what a user sees once the file is in the page cache
        started = time.perf_counter()
        stats = report.stats(store, 1, T0)
        stats_s = time.perf_counter() - started
        started = time.perf_counter()
        report.live_data(store, 1, T0)
        live_s = time.perf_counter() - started
    assert stats["calls_placed"] == 1_000_000 and stats["answer_rate"] == pytest.approx(2 / 3, 1e-3)
    assert stats_s < 0.5 and live_s < 0.5, (stats_s, live_s)  # ~0.15 s each on a dev machine
    # Every page of the report seeks by rowid and index: nothing sorts or scans the whole run.
    rows = report.report_rows(store, 1, T0)
    plans = query_plans(store, lambda: [next(rows) for _ in range(2 * report.PAGE + 1)])
    plans |= query_plans(store, lambda: report.stats(store, 1, T0))
    for sql, plan in plans.items():
        assert "TEMP B-TREE" not in plan and not plan.startswith("SCAN"), (sql, plan)
