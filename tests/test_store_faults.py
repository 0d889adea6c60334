"""The database under stress, in process: locked past the busy timeout, full, unwritable, too
new; counters that cannot drift; claim queries that never scan the jobs table; FULL sync.

Each failure must be one StoreError line, must dial nothing (judged from the simulator's
ledger), and must leave what was recorded before intact.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import sqlite3
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dialer_cli import store as store_module
from dialer_cli.cli import app
from dialer_cli.engine import Dialer, Options, Rules
from dialer_cli.errors import StoreError
from dialer_cli.models import CallInfo, CallParams, Claim, Lead, Outcome, RunStatus
from dialer_cli.simulator import CallPlan, Simulator
from dialer_cli.store import SCHEMA_VERSION, Store
from dialer_cli.twilio_adapter import TwilioCalls
from tests.conftest import FROM, FakeClock, make_leads, new_run

PARAMS = CallParams(twiml="<Response><Say>Hi</Say></Response>")


# -- helpers ------------------------------------------------------------------------------------


class HookedStore(Store):
    """The real Store; `before_claim` runs just before each claim's transaction."""

    before_claim: Callable[[], object] | None = None

    def claim(self, *args: Any, **kwargs: Any) -> Claim | None:
        if self.before_claim is not None:
            self.before_claim()
        return super().claim(*args, **kwargs)


class TripAfterCreate:
    """The real adapter; `trip` runs once after the first create returned (before the SID save)."""

    def __init__(self, inner: TwilioCalls, trip: Callable[[], object]):
        self.inner, self.trip = inner, trip

    def create(self, to: str, from_: str, params: CallParams) -> CallInfo:
        info = self.inner.create(to, from_, params)
        trip, self.trip = self.trip, lambda: None
        trip()
        return info

    def fetch(self, sid: str) -> CallInfo:
        return self.inner.fetch(sid)

    def recent(self, to: str, from_: str, since: float) -> list[CallInfo]:
        return self.inner.recent(to, from_, since)

    def end(self, sid: str, answered: bool) -> CallInfo:
        return self.inner.end(sid, answered)


def driver(store: Store, calls: Any, run_id: int, clock: FakeClock, owner: str) -> Dialer:
    """What `resume` does in process: take the run over, then a Dialer on the fake clock."""
    store.take_over(run_id, owner, 1, "test-host", clock())
    return Dialer(
        store, calls, run_id, owner, options=Options(poll_interval=1.0, reconcile_grace=5.0),
        rules=Rules(lambda c: PARAMS, lambda to: FROM), clock=clock,
    )  # fmt: skip


def run_to_end(dialer: Dialer, clock: FakeClock, check: Callable[[], None] = lambda: None) -> str:
    for _ in range(1000):
        tick = dialer.tick()
        check()
        if tick.done:
            return tick.status
        clock.advance(1.0)
    raise AssertionError("run did not finish")


def big_first(leads: list[Lead]) -> list[Lead]:
    """The first lead carries 20 kB of notes, so any write to its job row needs fresh pages:
    with `max_page_count` at the page count, that write hits a full disk for certain."""
    first = leads[0]
    return [dataclasses.replace(first, fields={**first.fields, "notes": "x" * 20_000}), *leads[1:]]


def fill_disk(store: Store) -> None:
    """Not one page more for the store's connection (max_page_count is per connection), and
    no free page left inside the file either."""
    if store.conn.execute("PRAGMA freelist_count").fetchone()[0]:
        store.conn.execute("VACUUM")
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    assert store.conn.execute(f"PRAGMA max_page_count = {pages}").fetchone()[0] == pages


def table_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [tuple(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id")]
    finally:
        conn.close()


def one_line(exc: pytest.ExceptionInfo[StoreError]) -> str:
    message = str(exc.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


# -- (a) locked past the busy timeout -----------------------------------------------------------


def test_a_claim_locked_out_past_the_busy_timeout_fails_in_one_line_and_dials_nothing(
    tmp_path, sim, calls, clock
):
    path = tmp_path / "d.db"
    store = HookedStore.open(path, timeout=0.2)
    run_id = new_run(store, make_leads(3))
    dialer = driver(store, calls, run_id, clock, "owner-1")
    other = sqlite3.connect(path, isolation_level=None)
    store.before_claim = lambda: other.execute("BEGIN IMMEDIATE")  # another writer, right then

    with pytest.raises(StoreError) as exc:
        dialer.tick()
    assert "locked" in one_line(exc)
    assert sim.creates() == []
    status = Store.open(path, readonly=True, timeout=0.2)  # `status` keeps answering meanwhile
    assert status.counts(run_id)["queued"] == 3 and status.counts(run_id)["in_progress"] == 0
    assert status.read("SELECT count(*) FROM calls")[0][0] == 0

    other.execute("ROLLBACK")
    other.close()
    store.before_claim = None
    dialer.tick()  # the lock is gone: the same claims now go through
    assert len(sim.creates()) == 3
    store.close()


# -- (b) disk full ------------------------------------------------------------------------------


def test_a_claim_on_a_full_disk_fails_in_one_line_dials_nothing_and_loses_nothing(
    tmp_path, sim, calls, clock
):
    path = tmp_path / "d.db"
    store = Store.open(path)
    run_id = new_run(store, big_first(make_leads(3)))
    dialer = driver(store, calls, run_id, clock, "owner-1")
    jobs, attempts = table_rows(path, "jobs"), table_rows(path, "calls")
    fill_disk(store)

    with pytest.raises(StoreError) as exc:
        dialer.tick()
    assert "disk full" in one_line(exc)
    assert sim.creates() == []
    assert table_rows(path, "jobs") == jobs and table_rows(path, "calls") == attempts == []
    assert store.counts(run_id)["queued"] == 3
    assert integrity(path) == "ok"

    store.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert run_to_end(dialer, clock) == RunStatus.COMPLETED
    assert sorted(c.to for c in sim.calls()) == sorted(lead.e164 for lead in make_leads(3))
    store.close()


@pytest.mark.parametrize("fault", ["disk-full", "locked"])
def test_a_failed_sid_save_leaves_the_job_dialing_and_the_next_driver_adopts_the_call(
    tmp_path, sim, calls, clock, fault
):
    path = tmp_path / "d.db"
    store = Store.open(path, timeout=0.2)
    run_id = new_run(store, big_first(make_leads(3)))
    other = sqlite3.connect(path, isolation_level=None)
    trip = (lambda: fill_disk(store)) if fault == "disk-full" else (
        lambda: other.execute("BEGIN IMMEDIATE")
    )  # fmt: skip
    dialer = driver(store, TripAfterCreate(calls, trip), run_id, clock, "owner-1")

    with pytest.raises(StoreError) as exc:
        dialer.tick()
    one_line(exc)
    [created] = sim.calls()  # Twilio has the call; we have no SID for it
    [(state, sid)] = store.read("SELECT state, call_sid FROM jobs WHERE e164=?", (created.to,))
    [(result, call_sid)] = store.read("SELECT result, call_sid FROM calls")
    assert (state, sid, result, call_sid) == ("dialing", None, "pending", None)
    if fault == "locked":
        other.execute("ROLLBACK")
    other.close()
    store.close()

    again = Store.open(path)  # the next driver: a new connection, as after a restart
    resumed = driver(again, calls, run_id, clock, "owner-2")
    resumed.tick()
    [(result, call_sid)] = again.read("SELECT result, call_sid FROM calls WHERE to_number=?",
                                      (created.to,))  # fmt: skip
    assert (result, call_sid) == ("adopted", created.sid)
    assert run_to_end(resumed, clock) == RunStatus.COMPLETED
    assert sorted(c.to for c in sim.calls()) == sorted(lead.e164 for lead in make_leads(3))
    assert integrity(path) == "ok"
    again.close()


# -- (c) a database that cannot be written -------------------------------------------------------


@pytest.mark.parametrize("readonly", [False, True])
def test_a_directory_is_refused_in_one_line(tmp_path, readonly):
    with pytest.raises(StoreError) as exc:
        Store.open(tmp_path, readonly=readonly)
    assert "directory" in one_line(exc)


def test_a_database_under_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError) as exc:
        Store.open(tmp_path / "file" / "d.db")
    assert "cannot open database" in one_line(exc)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path, readonly):
    path = tmp_path / "d.db"
    path.write_bytes(b"name,phone\n" * 500)
    with pytest.raises(StoreError) as exc:
        Store.open(path, readonly=readonly)
    assert "not a database" in one_line(exc)
    assert path.read_bytes() == b"name,phone\n" * 500


def test_a_read_only_open_refuses_every_write_in_one_line(tmp_path):
    path = tmp_path / "d.db"
    writer = Store.open(path)
    run_id = new_run(writer, make_leads(2))
    writer.close()
    before = {t: table_rows(path, t) for t in ("runs", "jobs", "calls")}
    ro = Store.open(path, readonly=True)
    writes: list[Callable[[], object]] = [
        lambda: ro.take_over(run_id, "me", 1, "h", 0.0),
        lambda: ro.heartbeat(run_id, "me", 0.0),
        lambda: ro.set_concurrency(run_id, 5),
        lambda: ro.request_stop(run_id, cancel=False, driver_alive=False, now=0.0),
        lambda: ro.dnc_add(["+12125550100"], "test", 0.0),
        lambda: new_run(ro, make_leads(1, start=500)),
    ]
    for write in writes:
        with pytest.raises(StoreError) as exc:
            write()
        assert "read-only" in one_line(exc)
    assert {t: table_rows(path, t) for t in before} == before


# -- (d) written by a newer dialer --------------------------------------------------------------


def newer_database(path: Path) -> Path:
    Store.open(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    return path


@pytest.mark.parametrize("readonly", [False, True])
def test_a_newer_schema_is_refused_naming_the_upgrade(tmp_path, readonly):
    path = newer_database(tmp_path / "d.db")
    with pytest.raises(StoreError) as exc:
        Store.open(path, readonly=readonly)
    message = one_line(exc)
    assert "upgrade dialer" in message and f"schema {SCHEMA_VERSION + 1}" in message
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1  # untouched
    conn.close()


def bad_database(tmp_path: Path, kind: str) -> Path:
    if kind == "directory":
        (tmp_path / "db-dir").mkdir()
        return tmp_path / "db-dir"
    if kind == "newer":
        return newer_database(tmp_path / "newer.db")
    path = tmp_path / "junk.db"
    path.write_bytes(b"\x00garbage" * 512)
    return path


@pytest.mark.parametrize("kind", ["directory", "newer", "not-a-database"])
@pytest.mark.parametrize("command", ["status", "runs", "resume", "start"])
def test_the_cli_says_it_in_one_line_and_exits_1(tmp_path, kind, command):
    db = bad_database(tmp_path, kind)
    csv = tmp_path / "leads.csv"
    csv.write_text("name,phone\nA,+12125550100\n")
    args = {
        "status": ["status", "1", "--json"],
        "runs": ["runs"],
        "resume": ["resume", "1"],
        "start": ["start", str(csv), "--simulate", "--sim-speed", "500"],
    }[command]
    result = CliRunner().invoke(app, [*args, "--db", str(db)], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(db) in lines[0], lines
    assert "Traceback" not in result.output and result.stdout == ""


# -- (e) counters are derived from the job rows --------------------------------------------------


def by_hand(store: Store, run_id: int) -> dict[str, Any]:
    """The counters from a plain GROUP BY over jobs, written without looking at counts()."""
    n = dict(
        store.read("SELECT state, count(*) FROM jobs WHERE run_id=? GROUP BY state", (run_id,))
    )
    outcomes = dict.fromkeys((o.value.replace("-", "_") for o in Outcome), 0)
    for outcome, count in store.read(
        "SELECT outcome, count(*) FROM jobs WHERE run_id=? AND state IN ('completed','failed') "
        "AND outcome IS NOT NULL GROUP BY outcome",
        (run_id,),
    ):
        outcomes[outcome.replace("-", "_")] = count
    get = lambda state: n.get(state, 0)  # noqa: E731
    return {
        "queued": get("queued"),
        "in_progress": get("dialing") + get("calling") + get("reviewing"),
        "dialing": get("dialing"),
        "calling": get("calling"),
        "completed": get("completed"),
        "failed": get("failed"),
        "needs_review": get("needs_review") + get("reviewing"),
        "skipped": get("skipped"),
        "total_leads": sum(n.values()) - get("skipped"),
        "outcomes": outcomes,
    }


def mixed_plan(to: str, nth: int) -> CallPlan:
    outcome = ("completed", "busy", "no-answer", "failed", "completed")[int(to[-1]) % 5]
    return CallPlan(outcome, queue_s=0.5, ring_s=2.0 + int(to[-1]), talk_s=5.0)


def test_counts_equal_a_group_by_over_the_jobs_after_every_tick(tmp_path, clock):
    skipped = [
        Lead(line=90, phone="12", e164=None, fields={"phone": "12"}, skip_reason="invalid-number"),
        Lead(line=91, phone="+12125550100", e164=None, fields={}, skip_reason="duplicate"),
    ]
    rejected = Lead(line=92, phone="+15005550001", e164="+15005550001", fields={})  # 21217
    store = Store.open(tmp_path / "d.db")
    run_id = new_run(store, [*make_leads(12), rejected, *skipped], concurrency=3)
    with Simulator(clock=clock, plan=mixed_plan) as sim:
        calls = TwilioCalls("AC" + "0" * 31 + "1", "simulator-token", sim.url, http_timeout=5)
        dialer = driver(store, calls, run_id, clock, "owner-1")
        seen: set[str] = set()

        def check() -> None:
            counts = store.counts(run_id)
            assert counts == by_hand(store, run_id)
            seen.update(k for k in ("dialing", "calling", "queued", "completed") if counts[k])

        check()
        assert run_to_end(dialer, clock, check) == RunStatus.COMPLETED
        answered = sum(c.answered(sim.speed) for c in sim.calls())
    final = store.counts(run_id)
    assert seen == {"calling", "queued", "completed"}  # the check ran mid-run too
    assert final["skipped"] == 2 and final["total_leads"] == 13 and final["completed"] == answered
    assert final["outcomes"]["rejected"] == 1 and final["failed"] == 13 - answered
    store.close()


# -- (f) the claim and the counters never scan the jobs table ------------------------------------

# Copied from store.py on purpose: test_the_copies_are_what_the_store_runs fails the moment the
# store runs anything else, so these plans cannot go stale silently.
LIVE = "('dialing','calling','reviewing')"
TERMINAL = "('completed','busy','failed','no-answer','canceled')"
NEXT_LEAD = (
    "SELECT id, e164, attempts, fields, tz FROM jobs "
    "WHERE run_id=? AND state='queued' AND coalesce(next_at, 0) <= ? {hours}"
    f"AND e164 NOT IN (SELECT e164 FROM jobs WHERE state IN {LIVE}) "
    "ORDER BY id LIMIT 1"
)
CLOSED_ZONES = "AND coalesce(tz, '') NOT IN ("  # `hours`, when calling hours close some zones
CLAIM_SQL = {
    "run": "SELECT status, owner_id, concurrency, target FROM runs WHERE id=?",
    "in flight": (
        "SELECT count(*) FROM jobs j JOIN runs r ON r.id = j.run_id "
        "LEFT JOIN calls c ON j.state = 'reviewing' AND c.job_id = j.id "
        f"AND c.result = 'candidate' AND coalesce(c.twilio_status, '') NOT IN {TERMINAL} "
        f"WHERE j.state IN {LIVE} AND r.target = ? "
        "AND (j.state != 'reviewing' OR c.id IS NOT NULL)"
    ),
    "smallest N": (
        "SELECT id, concurrency, owner_host, heartbeat_at, EXISTS (SELECT 1 FROM jobs j "
        f"WHERE j.run_id = r.id AND j.state IN {LIVE}) AS busy FROM runs r "
        "WHERE r.target = ? AND (r.id = ? OR r.status IN ('running','stopping'))"
    ),
    "outside hours": "UPDATE jobs SET next_at=?, wait='hours', updated_at=? WHERE id=?",
    "next lead": NEXT_LEAD.format(hours=""),
    "do not call": "SELECT 1 FROM dnc WHERE e164=?",
    "skip": (
        "UPDATE jobs SET state='skipped', skip_reason=?, "
        "skip_detail='added to the do-not-call list during the run', updated_at=? WHERE id=?"
    ),
    "take": (
        "UPDATE jobs SET state='dialing', token=?, attempts=attempts+1, next_at=NULL, "
        "wait=NULL, call_sid=NULL, twilio_status=NULL, status_at=?, updated_at=? WHERE id=?"
    ),
    "attempt": (
        "INSERT INTO calls (token, job_id, run_id, to_number, from_number, claimed_at) "
        "VALUES (?,?,?,?,?,?)"
    ),
}
PLANNED = {**CLAIM_SQL, "next lead, zones closed": NEXT_LEAD.format(hours=CLOSED_ZONES + "?,?) ")}
COUNTS_SQL = "SELECT state, outcome, count(*) AS n FROM jobs WHERE run_id=? GROUP BY state, outcome"


def executed_sql(function: Callable[..., Any], **local: str) -> list[str]:
    """The SQL text of every execute()/read() in a function's source, f-strings filled in from
    the store module's constants and the given values of local variables."""

    def text(node: ast.expr) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        assert isinstance(node, ast.JoinedStr), ast.dump(node)
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                assert isinstance(value.value, ast.Name), ast.dump(value)
                name = value.value.id
                parts.append(local[name] if name in local else str(getattr(store_module, name)))
            else:
                parts.append(text(value))
        return "".join(parts)

    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    return [
        text(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("execute", "read")
        and node.args
    ]


def test_the_copies_are_what_the_store_runs():
    claim = [*executed_sql(Store.claim), *executed_sql(Store._in_flight)]
    claim += executed_sql(Store._limit)
    claim += executed_sql(Store._next_job, hours="")
    assert sorted(claim) == sorted(CLAIM_SQL.values())
    assert CLOSED_ZONES in inspect.getsource(Store._next_job)
    assert executed_sql(Store.counts) == [COUNTS_SQL]


@pytest.fixture
def busy_store(tmp_path) -> Iterator[tuple[Store, int]]:
    """Two runs, a thousand leads, some of them in flight: enough for the planner to care."""
    store = Store.open(tmp_path / "d.db")
    first = new_run(store, make_leads(1000, start=1000))
    new_run(store, make_leads(50, start=3000))
    store.take_over(first, "me", 1, "h", 0.0)
    for _ in range(3):
        assert store.claim(first, "me", 0.0, lambda to: FROM) is not None
    yield store, first
    store.close()


def plan(store: Store, sql: str) -> list[str]:
    rows = store.conn.execute(f"EXPLAIN QUERY PLAN {sql}", [1] * sql.count("?")).fetchall()
    return [row[3] for row in rows]


def full_scans_of_jobs(details: list[str]) -> list[str]:
    """Plan lines that read every job. Scanning jobs_live_number is fine: that partial index
    holds only the calls in flight, never more than the global limit."""
    return [
        d
        for d in details
        if re.match(r"SCAN (jobs|j)\b", d) and not re.search(r"INDEX jobs_live_number\b", d)
    ]


@pytest.mark.parametrize("name", [*PLANNED, "counts"])
def test_no_query_of_the_claim_or_the_counters_scans_the_jobs_table(busy_store, name):
    store, _ = busy_store
    details = plan(store, COUNTS_SQL if name == "counts" else PLANNED[name])
    assert full_scans_of_jobs(details) == [], details


def test_the_claim_takes_the_write_lock_up_front(busy_store):
    """A deferred BEGIN would let two drivers read the same free slot (§6.7 of the notes)."""
    store, run_id = busy_store
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    store.set_concurrency(run_id, 4)
    statements.clear()
    assert store.claim(run_id, "me", 0.0, lambda to: FROM) is not None
    store.conn.set_trace_callback(None)
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"


def test_the_next_lead_is_found_without_sorting_the_queue(busy_store):
    """Not a scan, but as costly: sorting every queued lead of the run on each claim, while
    holding the write lock, makes a claim O(queued) (80 ms at 300k queued leads)."""
    store, _ = busy_store
    details = plan(store, CLAIM_SQL["next lead"])
    assert not [d for d in details if "TEMP B-TREE" in d], details


# -- (g) durability -------------------------------------------------------------------------------


def test_every_write_connection_syncs_fully_in_wal_mode(tmp_path):
    path = tmp_path / "d.db"
    for _ in range(2):  # a fresh database, then a reopened one: the pragmas are per connection
        store = Store.open(path)
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        store.close()
