"""The database's schema, as the ordered list of changes that builds it (llm's pattern).

Each migration is a small function of a `sqlite_utils.Database`; `PRAGMA user_version` counts
how many have run, so `dialer doctor` and a newer-schema check can name it. `migrate` applies
what is missing inside the caller's `BEGIN IMMEDIATE`, so two processes opening a new database
at once cannot both apply one (sqlite-utils nests its own work in savepoints). Tables are written
in code through sqlite-utils, readably; the few things it cannot say (partial indexes) are SQL.
A new column or table is a new function at the end — never an edit of one that has shipped.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when a migration runs: 0.14 s that `status` should not pay
    import sqlite_utils

Migration = Callable[["sqlite_utils.Database"], None]
MIGRATIONS: list[Migration] = []
migration = MIGRATIONS.append

LIVE = "('dialing','calling','reviewing')"  # the job states that hold a line


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def latest() -> int:
    return len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this database lacks; the caller holds the write lock."""
    import sqlite_utils

    db = sqlite_utils.Database(conn)
    for number, step in enumerate(MIGRATIONS[version(conn) :], start=version(conn) + 1):
        step(db)
        conn.execute(f"PRAGMA user_version = {number}")


@migration
def m001_initial(db: sqlite_utils.Database) -> None:
    """Runs, jobs (one per lead), calls (one per create attempt), the do-not-call list."""
    db["runs"].create(
        {
            "id": int,
            "source": str,
            "source_key": str,
            "campaign": str,
            "status": str,
            "concurrency": int,
            "target": str,
            "base_url": str,
            "from_number": str,
            "settings": str,
            "error": str,
            "owner_id": str,
            "owner_pid": int,
            "owner_host": str,
            "heartbeat_at": float,
            "stop_mode": str,
            "created_at": float,
            "started_at": float,
            "finished_at": float,
        },
        pk="id",
        not_null={"source", "source_key", "status", "concurrency", "target", "settings"}
        | {"created_at"},
        defaults={"settings": "{}"},
    )
    db["runs"].create_index(["source_key", "status"], index_name="runs_source")
    db["runs"].create_index(["campaign", "status"], index_name="runs_campaign")
    db["jobs"].create(
        {
            "id": int,
            "run_id": int,
            "line": int,
            "phone": str,
            "e164": str,
            "name": str,
            "fields": str,
            "state": str,
            "outcome": str,
            "skip_reason": str,
            "skip_detail": str,
            "attempts": int,
            "next_at": float,
            "wait": str,
            "tz": str,
            "token": str,
            "call_sid": str,
            "twilio_status": str,
            "status_at": float,
            "error_code": int,
            "error_message": str,
            "updated_at": float,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"run_id", "line", "phone", "name", "fields", "state", "attempts"},
        defaults={"name": "", "attempts": 0},
    )
    db["jobs"].create_index(["run_id", "state", "outcome"], index_name="jobs_run_state")
    db["jobs"].create_index(["run_id", "state", "next_at", "wait"], index_name="jobs_run_wait")
    # Partial indexes, which sqlite-utils cannot declare: the queue the claim reads, the token
    # every update is fenced by, the skip reasons, and one live job per number at a time.
    db.execute("CREATE INDEX jobs_queue ON jobs(run_id, id) WHERE state = 'queued'")
    db.execute("CREATE INDEX jobs_token ON jobs(token) WHERE token IS NOT NULL")
    db.execute("CREATE INDEX jobs_skipped ON jobs(run_id, skip_reason) WHERE state = 'skipped'")
    db.execute(f"CREATE UNIQUE INDEX jobs_live_number ON jobs(e164) WHERE state IN {LIVE}")
    db["calls"].create(
        {
            "id": int,
            "token": str,
            "job_id": int,
            "run_id": int,
            "to_number": str,
            "from_number": str,
            "claimed_at": float,
            "result": str,
            "call_sid": str,
            "twilio_status": str,
            "checks": int,
            "started_at": float,
            "ended_at": float,
            "duration_s": int,
            "answered_by": str,
            "error_code": int,
            "error_message": str,
        },
        pk="id",
        foreign_keys=[("job_id", "jobs", "id"), ("run_id", "runs", "id")],
        not_null={"token", "job_id", "run_id", "to_number", "from_number", "claimed_at"}
        | {"result", "checks"},
        defaults={"result": "pending", "checks": 0},
    )
    db["calls"].create_index(["token"], index_name="calls_token", unique=True)
    db["calls"].create_index(["run_id", "id"], index_name="calls_run")
    db["calls"].create_index(
        ["run_id", "twilio_status", "duration_s", "claimed_at", "ended_at"],
        index_name="calls_run_status",
    )
    db["calls"].create_index(["job_id"], index_name="calls_job")
    db["calls"].create_index(["call_sid"], index_name="calls_sid")
    db["dnc"].create(
        {"e164": str, "added_at": float, "source": str}, pk="e164", not_null={"added_at"}
    )


FINAL = "('completed','failed','skipped','needs_review')"  # a lead that will not change again


@migration
def m002_writeback_outbox(db: sqlite_utils.Database) -> None:
    """Outcomes to write back to the lead source (dialer_cli/writeback.py). Triggers on jobs
    queue a row the moment a lead of a run with a `writeback` statement reaches a final state,
    in the transaction that put it there, whichever path did (import, claim, end, review)."""
    db["writeback"].create(
        {
            "job_id": int,
            "run_id": int,
            "state": str,
            "tries": int,
            "next_at": float,
            "error": str,
            "tried_at": float,
            "written_at": float,
        },
        pk="job_id",
        foreign_keys=[("job_id", "jobs", "id")],
        not_null={"run_id", "state", "tries", "next_at"},
        defaults={"state": "pending", "tries": 0, "next_at": 0},
    )
    db["writeback"].create_index(["run_id", "state", "next_at"], index_name="writeback_run")
    db.execute(
        "CREATE INDEX writeback_errors ON writeback(run_id, tried_at) WHERE error IS NOT NULL"
    )
    queue = (
        "INSERT OR IGNORE INTO writeback (job_id, run_id) SELECT NEW.id, NEW.run_id FROM runs "
        "WHERE id = NEW.run_id AND json_extract(settings, '$.writeback') IS NOT NULL;"
    )
    db.execute(
        f"CREATE TRIGGER writeback_on_insert AFTER INSERT ON jobs "
        f"WHEN NEW.state IN {FINAL} BEGIN {queue} END"
    )
    db.execute(
        f"CREATE TRIGGER writeback_on_final AFTER UPDATE OF state ON jobs "
        f"WHEN NEW.state IN {FINAL} AND OLD.state NOT IN {FINAL} BEGIN {queue} END"
    )


@migration
def m003_call_prices(db: sqlite_utils.Database) -> None:
    """Twilio's price and price_unit, filled in some time after a call ends (prices.py). Two
    partial indexes keep stats.cost as fast as the other statistics: one finds the answered
    calls still missing a price, one covers the sum of the prices known."""
    db["calls"].add_column("price", str)
    db["calls"].add_column("price_unit", str)
    db.execute(
        "CREATE INDEX calls_unpriced ON calls(run_id, ended_at) "
        "WHERE twilio_status = 'completed' AND price IS NULL"
    )
    db.execute(
        "CREATE INDEX calls_priced ON calls(run_id, price_unit, price) WHERE price IS NOT NULL"
    )


@migration
def m004_voicemail(db: sqlite_utils.Database) -> None:
    """What became of each call's machine message (voicemail.py): pending, dropped, ..."""
    db["calls"].add_column("voicemail", str)


@migration
def m005_cheaper_import(db: sqlite_utils.Database) -> None:
    """Less work for every lead imported (a 1M-lead import writes 2.7 s faster, measured by
    bench/import_profile.py). jobs_run_wait holds only the leads that wait for a time (retry,
    hours, throttle), not every fresh one: its queries compare next_at or say `next_at IS NOT
    NULL`. The insert trigger, run as a program for every row for the few leads of a write-back
    run skipped at import, is gone: the import queues those in the transaction that writes them
    (store._ChunkWriter); the update trigger still queues every other final state."""
    db.execute("DROP INDEX jobs_run_wait")
    db.execute(
        "CREATE INDEX jobs_run_wait ON jobs(run_id, state, next_at, wait) WHERE next_at IS NOT NULL"
    )
    db.execute("DROP TRIGGER writeback_on_insert")
