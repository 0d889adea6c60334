"""The schema in code (sqlite-utils, dialer_cli/migrations.py), and the upgrade of a database the
schema-1 release wrote (tests/data/schema-1.db: a completed run, a stopped one, a do-not-call
entry), in place, without losing a row."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from dialer_cli import migrations
from dialer_cli.store import SCHEMA_VERSION, Store
from tests.conftest import FROM, ROOT, T0, make_leads, new_run

SCHEMA_1 = ROOT / "tests" / "data" / "schema-1.db"


def release_db(tmp_path: Path) -> Path:
    path = tmp_path / "old.db"
    shutil.copy(SCHEMA_1, path)
    return path


def shape(path: Path) -> dict[str, object]:
    """Every table's columns (name, type affinity, not null, default, pk) and index names."""
    conn = sqlite3.connect(path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out: dict[str, object] = {}
    for table in sorted(t for t in tables if not t.startswith("sqlite_")):
        columns = conn.execute(f"PRAGMA table_info({table})").fetchall()
        affinity = {"FLOAT": "REAL"}
        out[table] = [(c[1], affinity.get(c[2], c[2]), c[3], c[4], c[5]) for c in columns]
        indexes = conn.execute(f"PRAGMA index_list({table})").fetchall()
        out[f"{table} indexes"] = sorted(
            i[1] for i in indexes if not i[1].startswith("sqlite_autoindex")
        )
    conn.close()
    return out


def test_the_schema_in_code_builds_what_the_release_built(tmp_path):
    """m001 written with sqlite-utils is the schema-1 release's schema, column for column
    (a UNIQUE constraint became a named unique index; REAL is spelled FLOAT)."""
    Store.open(tmp_path / "new.db").close()
    old, new = shape(SCHEMA_1), shape(tmp_path / "new.db")
    for table in ("runs", "jobs", "calls", "dnc"):
        assert new[table][: len(old[table])] == old[table], table
    for table in ("runs", "jobs", "calls"):
        assert set(old[f"{table} indexes"]) <= set(new[f"{table} indexes"]), table


def test_a_schema_1_database_upgrades_in_place_without_losing_a_row(tmp_path):
    path = release_db(tmp_path)
    conn = sqlite3.connect(path)
    before = {
        t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in migrations_tables()
    }
    conn.close()
    store = Store.open(path)
    version = store.conn.execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION == migrations.latest()
    for table, rows in before.items():
        now = store.conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
        assert [tuple(r)[: len(rows[0])] for r in now] == rows, table
    assert store.counts(1)["completed"] == 10 and store.counts(2)["queued"] == 14
    store.close()


def migrations_tables() -> tuple[str, ...]:
    return ("runs", "jobs", "calls", "dnc")


def test_the_release_s_stopped_run_resumes_after_the_upgrade_and_nobody_is_called_twice(tmp_path):
    path = release_db(tmp_path)
    dialled_before = {r[0] for r in sqlite3.connect(path).execute(
        "SELECT to_number FROM calls WHERE run_id = 2")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "dialer_cli", "resume", "2", "--db", str(path), "-q",
         "--sim-speed", "200"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    conn = sqlite3.connect(path)
    states = dict(conn.execute("SELECT state, count(*) FROM jobs WHERE run_id=2 GROUP BY state"))
    assert "queued" not in states and states["skipped"] == 2
    calls = [r[0] for r in conn.execute("SELECT to_number FROM calls WHERE run_id = 2")]
    assert len(calls) == len(set(calls)) == 18  # each of the 18 dialled once, old and new
    assert dialled_before <= set(calls)


def test_a_fresh_lead_costs_no_trigger_and_no_waiting_index(tmp_path):
    """An insert trigger runs as a program for every row written (1.8 s of a 1M import), and an
    index of every lead's next_at (0.9 s) holds NULL for all fresh ones (m005)."""
    Store.open(tmp_path / "new.db").close()
    conn = sqlite3.connect(tmp_path / "new.db")
    triggers = conn.execute(
        "SELECT name FROM sqlite_master WHERE type='trigger' AND sql LIKE '%INSERT ON jobs%'"
    ).fetchall()
    assert triggers == []
    [wait] = conn.execute("SELECT sql FROM sqlite_master WHERE name='jobs_run_wait'").fetchone()
    assert wait.endswith("WHERE next_at IS NOT NULL")
    conn.close()


def test_the_claim_and_the_counters_read_jobs_through_indexes(tmp_path):
    """Every statement a claim and `status` run on jobs finds its rows through an index: none
    reads the table whole, and next_due reads only the leads waiting for a time."""
    store = Store.open(tmp_path / "new.db")
    run_id = new_run(store, make_leads(30))
    store.take_over(run_id, "owner", 1, "host", T0)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    claim = store.claim(run_id, "owner", T0, pick_from=lambda _: FROM)
    assert claim is not None
    store.counts(run_id), store.pending(run_id), store.waiting(run_id, T0)
    store.next_due(run_id), store.next_due(run_id, ["America/New_York"])
    store.conn.set_trace_callback(None)
    on_jobs = [s for s in statements if re.search(r"\bjobs\b", s) and not s.startswith("BEGIN")]
    assert len(on_jobs) >= 6
    for sql in on_jobs:
        plan = [row[3] for row in store.conn.execute("EXPLAIN QUERY PLAN " + sql)]
        scans = [step for step in plan if re.fullmatch(r"SCAN (jobs|j)", step)]
        assert scans == [], f"{sql}\n{plan}"
        if "min(next_at)" in sql:  # next_due, on a 1M-lead run: the waiting few, not every lead
            assert any("jobs_run_wait" in step for step in plan), f"{sql}\n{plan}"
    store.close()
