"""Outcomes written back to the lead source: SQLite always, PostgreSQL and MariaDB/MySQL on
127.0.0.1 when they answer (skipped with the reason otherwise), through the real CLI, the real
twilio client and the simulator. The CRM is judged against `dialer report`."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dialer_cli import writeback
from dialer_cli.cli import app
from dialer_cli.engine import Dialer, Options, Rules
from dialer_cli.models import CallParams, Lead
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, CallPlan, Simulator
from dialer_cli.store import SCHEMA_VERSION, Store
from tests.conftest import FROM, ROOT, T0, make_leads, wait_for, write_config
from tests.test_cli import dialer
from tests.test_sources import SERVERS, Db, db, server_engine  # noqa: F401 - db: a fixture

cli = CliRunner()
STATEMENT = (
    "UPDATE {t} SET status = :outcome, called_at = :ended_at, call_sid = :call_sid, "
    "talk_s = :talk_s, attempts = :attempts WHERE id = :id"
)


def run_cli(*args: object) -> Any:
    return cli.invoke(app, [str(a) for a in args])


def crm_table(crm: Db, people: list[tuple[int, str, str]], check: str = "") -> str:
    """The CRM's leads: id, name, phone, and columns the write-back fills (`call_sid` is also one
    of our parameter names: ours wins, the lead's own value is :lead_call_sid)."""
    name = f"crm_{uuid.uuid4().hex[:10]}"
    crm.tables.append(name)
    crm.execute(
        f"CREATE TABLE {name} (id INTEGER PRIMARY KEY, name VARCHAR(50), phone VARCHAR(30), "
        f"status VARCHAR(40), called_at VARCHAR(30), call_sid VARCHAR(40), talk_s INTEGER, "
        f"attempts INTEGER{check})"
    )
    values = ", ".join(f"({i}, '{n}', '{p}', 'new', NULL, NULL, NULL, NULL)" for i, n, p in people)
    crm.execute(f"INSERT INTO {name} VALUES {values}")
    return name


def people(n: int, start: int = 100) -> list[tuple[int, str, str]]:
    return [(i + 1, f"Lead {i}", f"+1212555{start + i:04d}") for i in range(n)]


def crm_rows(crm: Db, table: str) -> dict[int, dict[str, Any]]:
    sql = f"SELECT id, status, called_at, call_sid, talk_s, attempts FROM {table}"
    if crm.engine is None:
        with sqlite3.connect(crm.path) as conn:
            conn.row_factory = sqlite3.Row
            return {int(r["id"]): dict(r) for r in conn.execute(sql)}
    with crm.engine.connect() as conn:
        return {int(r.id): dict(r._mapping) for r in conn.exec_driver_sql(sql)}


def report_of(db_path: Path, run_id: int = 1) -> dict[int, dict[str, Any]]:
    result = run_cli("report", run_id, "--format", "json", "--db", db_path)
    assert result.exit_code == 0, result.output
    return {int(row["id"]): row for row in json.loads(result.stdout)}


def assert_crm_matches_report(crm: Db, table: str, db_path: Path, refused=()) -> None:
    """Every lead's row in the CRM says what the report says (refused ones kept their 'new')."""
    rows, report = crm_rows(crm, table), report_of(db_path)
    assert set(rows) == set(report)
    for lead_id, row in report.items():
        got = rows[lead_id]
        if lead_id in refused:
            assert got["status"] == "new"
            continue
        expected = {
            "status": row["outcome"],
            "call_sid": row["call_sid"] or None,
            "talk_s": row["talk_s"],
            "attempts": row["attempts"],
        }
        assert {k: got[k] for k in expected} == expected, lead_id
        assert (got["called_at"] is None) == (row["call_sid"] in (None, ""))
        if got["called_at"]:
            assert got["called_at"].endswith("Z") and got["called_at"][10] == "T"


def status(db_path: Path, run_id: int = 1) -> dict[str, Any]:
    result = run_cli("status", run_id, "--json", "--db", db_path)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def outbox(db_path: Path) -> dict[str, int]:
    """The outbox by state, read as another process would (empty before it exists)."""
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            return dict(conn.execute("SELECT state, count(*) FROM writeback GROUP BY state"))
    except sqlite3.Error:
        return {}


@pytest.fixture
def quick_sim() -> Iterator[Simulator]:
    def plan(to: str, nth: int) -> CallPlan:
        outcome = "busy" if to.endswith("2") else "completed"
        return CallPlan(outcome, queue_s=0.02, ring_s=0.05, talk_s=1.0)

    with Simulator(plan=plan) as sim:
        yield sim


# -- end to end, on every database ----------------------------------------------------------------


def test_every_final_lead_is_written_back_and_a_refused_row_is_recorded(
    db: Db,  # noqa: F811
    tmp_path: Path,
    quick_sim: Simulator,
) -> None:
    """Answered, busy, invalid and duplicate numbers all reach the CRM, exactly as the report
    says; the CRM refuses one row (a CHECK constraint): it is recorded, the others are written."""
    leads = [*people(4), (5, "Bad", "not a number"), (6, "Dup", "+12125550100")]
    table = crm_table(db, leads, check=", CHECK (status <> 'skipped:duplicate')")
    cfg = write_config(tmp_path / "c.yaml", quick_sim, poll_interval=0.02)
    d = tmp_path / "d.db"
    result = run_cli(
        "start", db.url, "--query", f"SELECT * FROM {table} ORDER BY id",
        "--writeback", STATEMENT.format(t=table), "--config", cfg, "--db", d,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "write-back: 0 pending, 1 refused by the source" in result.stderr
    wb = status(d)["writeback"]
    assert (wb["pending"], wb["written"], wb["failed"]) == (0, 5, 1)
    assert wb["last_error"]  # the database's own words about its constraint
    assert_crm_matches_report(db, table, d, refused={6})
    assert crm_rows(db, table)[3]["status"] == "busy"
    assert crm_rows(db, table)[5]["status"] == "skipped:invalid-number"
    again = run_cli("writeback", 1, "--db", d)
    assert again.exit_code == 1 and "0 pending, 1 refused" in again.stdout


@pytest.mark.parametrize(
    ("statement", "needle"),
    [
        ("UPDATE {t} SET status = :outcome WHERE id = :lead_id", "unknown parameter :lead_id"),
        ("UPDATE {t}_gone SET status = :outcome WHERE id = :id", "cannot work"),
        ("UPDATE {t} SET no_such_column = :outcome WHERE id = :id", "cannot work"),
        ("UPDATE {t} SET status = :outcome WHERE id = :id AND", "cannot work"),
    ],
    ids=["unknown-parameter", "missing-table", "missing-column", "syntax-error"],
)
def test_a_statement_that_can_never_work_is_refused_before_anything_is_dialled(
    db: Db,  # noqa: F811
    tmp_path: Path,
    quick_sim: Simulator,
    statement: str,
    needle: str,
) -> None:
    table = crm_table(db, people(2))
    cfg = write_config(tmp_path / "c.yaml", quick_sim)
    d = tmp_path / "d.db"
    result = run_cli(
        "start", db.url, "--table", table, "--writeback", statement.format(t=table),
        "--config", cfg, "--db", d,
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and needle in result.stderr
    assert quick_sim.calls() == [] and not d.exists()
    assert {r["status"] for r in crm_rows(db, table).values()} == {"new"}


def test_writeback_on_a_csv_source_is_refused(tmp_path: Path, quick_sim: Simulator) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text("phone\n+12125550100\n")
    cfg = write_config(tmp_path / "c.yaml", quick_sim)
    d = tmp_path / "d.db"
    result = run_cli("start", csv, "--writeback", "UPDATE x SET y = 1", "--config", cfg, "--db", d)
    assert result.exit_code == 2
    assert "writeback needs a database source" in result.stderr and "dialer report" in result.stderr
    assert quick_sim.calls() == [] and not d.exists()


def test_a_campaign_writes_back_with_its_statement(tmp_path: Path, quick_sim: Simulator) -> None:
    path = tmp_path / "crm.db"
    sqlite3.connect(path).close()
    crm = Db("sqlite", f"sqlite:///{path}", path=path)
    table = crm_table(crm, people(3))
    cfg = write_config(tmp_path / "c.yaml", quick_sim, poll_interval=0.02)
    cfg.write_text(
        cfg.read_text()
        + f"campaigns:\n  nightly:\n    source: sqlite:///{path}\n"
        + f"    query: SELECT * FROM {table} WHERE status = 'new'\n"
        + f'    writeback: "{STATEMENT.format(t=table)}"\n'
    )
    d = tmp_path / "d.db"
    assert run_cli("start", "--campaign", "nightly", "--config", cfg, "--db", d).exit_code == 0
    assert_crm_matches_report(crm, table, d)
    # tomorrow's query no longer sees tonight's leads
    again = run_cli("start", "--campaign", "nightly", "--config", cfg, "--db", d)
    assert again.exit_code == 2 and "no leads" in again.stderr


# -- a CRM that goes away ------------------------------------------------------------------------


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a database server. `down()` closes it and every
    connection through it (the CRM went away); `up()` listens again on the same port;
    `freeze()` keeps connections open and passes nothing on (a CRM that hangs)."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.flowing = threading.Event()
        self.flowing.set()
        self.sockets: list[socket.socket] = []
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.up()

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                return
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def down(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        self.sockets.clear()

    def freeze(self) -> None:
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()


@pytest.fixture(params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[Db, Proxy, str]]:
    """A real server, a proxy in front of it, and the URL through the proxy."""
    import sqlalchemy as sa

    database = Db(request.param, SERVERS[request.param], engine=server_engine(request.param))
    url = sa.engine.make_url(database.url)
    proxy = Proxy((url.host or "127.0.0.1", url.port or 0))
    through = url.set(port=proxy.port).render_as_string(hide_password=False)
    yield database, proxy, through
    proxy.thaw()
    proxy.down()
    database.drop_all()


def long_sim() -> Simulator:
    plan = lambda to, nth: CallPlan("completed", queue_s=0.02, ring_s=0.05, talk_s=0.5)  # noqa: E731
    return Simulator(plan=plan)


def test_a_crm_that_goes_away_and_comes_back(server: tuple[Db, Proxy, str], tmp_path: Path) -> None:
    """The CRM goes away in the middle of the run: dialling goes on to the end, the rows wait in
    the outbox, and `dialer writeback` afterwards leaves every row written as the report says."""
    crm, proxy, url = server
    table = crm_table(crm, people(12))
    with long_sim() as sim:
        cfg = write_config(tmp_path / "c.yaml", sim, poll_interval=0.02, concurrency=2)
        d = tmp_path / "d.db"
        proc = dialer(
            "start", url, "--table", table, "--writeback", STATEMENT.format(t=table),
            "--config", cfg, "--db", d,
        )  # fmt: skip
        wait_for(lambda: d.exists() and outbox(d).get("written", 0) >= 1, what="a first write")
        proxy.down()
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
        assert len({c.to for c in sim.calls()}) == len(sim.calls()) == 12
    stderr = proc.stderr.read() if proc.stderr else ""
    wb = status(d)["writeback"]
    assert wb["pending"] > 0 and wb["written"] + wb["pending"] == 12 and wb["failed"] == 0
    assert wb["last_error"] and f"write-back: {wb['pending']} pending" in stderr
    assert status(d)["completed"] == 12
    down = run_cli("writeback", 1, "--db", d)
    assert down.exit_code == 1 and f"{wb['pending']} pending" in down.stdout
    proxy.up()
    back = run_cli("writeback", 1, "--db", d)
    assert back.exit_code == 0, back.output
    assert back.stdout.strip() == "run 1: 12 written, 0 pending, 0 refused by the source"
    assert status(d)["writeback"] == {"pending": 0, "written": 12, "failed": 0, "last_error": None}
    assert_crm_matches_report(crm, table, d)


def test_a_crm_that_hangs_never_delays_dialling(
    server: tuple[Db, Proxy, str], tmp_path: Path
) -> None:
    """Every connection to the CRM hangs from the first call on: the calls go out on time and
    the exit waits for the CRM no longer than the bounded flush."""
    crm, proxy, url = server
    table = crm_table(crm, people(8))
    with long_sim() as sim:
        cfg = write_config(tmp_path / "c.yaml", sim, poll_interval=0.02, concurrency=4)
        d = tmp_path / "d.db"
        proc = dialer(
            "start", url, "--table", table, "--writeback", STATEMENT.format(t=table),
            "--config", cfg, "--db", d,
        )  # fmt: skip
        wait_for(lambda: sim.calls(), what="the first call")
        proxy.freeze()
        began = time.monotonic()
        wait_for(lambda: len(sim.calls()) == 8, timeout=10, what="every call")
        # two waves of 0.6 s calls; a writer in the way would stall at the CRM's timeouts
        assert time.monotonic() - began < 4
        assert proc.wait(writeback.FLUSH_TIMEOUT + 15) == 0
    assert status(d)["completed"] == 8
    assert status(d)["writeback"]["pending"] == 8


# -- the outbox ----------------------------------------------------------------------------------


@pytest.fixture
def sim(clock) -> Iterator[Simulator]:
    """Numbers ending in 1 are busy; the rest answer."""

    def plan(to: str, nth: int) -> CallPlan:
        return CallPlan("busy" if to.endswith("1") else "completed", 0.5, 2.0, 10.0)

    with Simulator(clock=clock, plan=plan) as simulator:
        yield simulator


def new_run(store: Store, leads: list[Lead], wb: dict[str, str] | None) -> int:
    return store.create_run(
        source="crm", source_key=f"k{uuid.uuid4().hex}", leads=leads,
        target=DEFAULT_ACCOUNT_SID, base_url=None, from_number=FROM, concurrency=2,
        settings={"writeback": wb} if wb else {}, now=T0,
    )  # fmt: skip


def final_jobs(store: Store, run_id: int) -> set[int]:
    rows = store.read(
        "SELECT id FROM jobs WHERE run_id=? AND state IN "
        "('completed','failed','skipped','needs_review')",
        (run_id,),
    )
    return {r[0] for r in rows}


def queued_rows(store: Store) -> set[int]:
    return {r[0] for r in store.read("SELECT job_id FROM writeback")}


def test_every_path_that_finalises_a_lead_feeds_the_outbox_in_its_transaction(
    store: Store, calls: Any, clock: Any
) -> None:
    """Skipped at import, skipped at the claim (do-not-call added during the run), rejected by
    Twilio, answered, busy after its retry: each queues one row when, and only when, the lead is
    final; a lead waiting for its retry does not. A run without a statement queues nothing."""
    leads = make_leads(4)  # +12125550100 (answered), ...101 (busy), ...102, ...103
    leads[2] = Lead(4, "+15005550002", "+15005550002", {"phone": "+15005550002", "name": "R"})
    bad = Lead(9, "nope", None, {"phone": "nope", "name": "B"}, "invalid-number", "not a number")
    spec = writeback.spec("sqlite:///crm.db", "UPDATE t SET s = :outcome")
    run_id = new_run(store, [*leads, bad], spec)
    other = new_run(store, make_leads(2, start=500), None)
    assert queued_rows(store) == final_jobs(store, run_id) != set()  # the invalid number
    store.dnc_add([leads[3].e164 or ""], "test", T0)
    store.take_over(run_id, "me", 1, "host", clock())
    params = CallParams(twiml="<Response/>")
    dialer_ = Dialer(
        store, calls, run_id, "me",
        options=Options(poll_interval=1.0, max_attempts=2, retry_on=("busy",), retry_delay=60),
        rules=Rules(params_for=lambda c: params, pick_from=lambda to: FROM), clock=clock,
    )  # fmt: skip
    for _ in range(30):
        dialer_.tick()
        clock.advance(1.0)
    busy = store.read("SELECT id, state FROM jobs WHERE e164='+12125550101'")[0]
    assert busy["state"] == "queued"  # waiting for its retry: not final, nothing to write
    assert queued_rows(store) == final_jobs(store, run_id) and busy["id"] not in queued_rows(store)
    assert len(queued_rows(store)) == 4  # invalid, answered, rejected, do-not-call
    clock.advance(60)
    for _ in range(30):
        if dialer_.tick().done:
            break
        clock.advance(1.0)
    assert (
        queued_rows(store)
        == final_jobs(store, run_id)
        == {r[0] for r in store.read("SELECT id FROM jobs WHERE run_id=?", (run_id,))}
    )
    assert not queued_rows(store) & final_jobs(store, other)


def test_a_schema_1_database_upgrades_in_place(tmp_path: Path) -> None:
    """The database the release before write-back wrote keeps every row and gains the
    outbox; its old runs have `writeback: null` in status."""
    path = tmp_path / "old.db"
    shutil.copy(ROOT / "tests" / "data" / "schema-1.db", path)
    store = Store.open(path)
    assert store.read("PRAGMA user_version")[0][0] == SCHEMA_VERSION >= 2
    assert store.read("SELECT count(*) FROM jobs WHERE run_id = 1")[0][0] == 20
    assert store.read("SELECT count(*) FROM writeback")[0][0] == 0
    store.close()
    assert status(path)["writeback"] is None and status(path)["completed"] == 10


# -- the writer ----------------------------------------------------------------------------------


def test_rows_wait_while_the_crm_is_locked_and_go_in_batches(tmp_path: Path, store: Store) -> None:
    """250 final leads: three source transactions (100, 100, 50). While another process holds
    the CRM's write lock nothing is marked written and the rows back off; then all go."""
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (phone TEXT, outcome TEXT)")
        conn.executemany(
            "INSERT INTO t VALUES (?, NULL)", [(f"+1646555{i:04d}",) for i in range(250)]
        )
    spec = writeback.spec(
        f"sqlite:///{path}", "UPDATE t SET outcome = :outcome WHERE phone = :phone"
    )
    leads = [
        Lead(i, f"+1646555{i:04d}", None, {"phone": f"+1646555{i:04d}"}, "invalid-number", "x")
        for i in range(250)
    ]
    run_id = new_run(store, leads, spec)
    now = [T0]
    writer = writeback.Writer(store.path, run_id, spec, clock=lambda: now[0])
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    writer.sink.conn = sqlite3.connect(path, timeout=0.05, isolation_level=None)  # fail fast
    assert writer.write_pending(store, writer.sink, waiting_too=False) is False
    counts = store.writeback_counts(run_id)
    assert (counts["pending"], counts["written"]) == (250, 0) and "locked" in counts["last_error"]
    assert len(store.writeback_due(run_id, now[0], 1000)) == 150  # the first 100 back off
    blocker.execute("ROLLBACK")
    commits: list[int] = []
    writer.sink.conn.set_trace_callback(lambda sql: commits.append(1) if sql == "COMMIT" else None)
    now[0] += 2
    assert writer.write_pending(store, writer.sink, waiting_too=False) is True
    assert len(commits) == 3
    assert store.writeback_counts(run_id) == {
        "pending": 0, "written": 250, "failed": 0, "last_error": None,
    }  # fmt: skip
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT DISTINCT outcome FROM t").fetchall() == [
            ("skipped:invalid-number",)
        ]
