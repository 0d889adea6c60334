"""Status at scale: `dialer status RUN --json` on a run of 1,000,000 leads.

    python bench/status_scale.py [--quick] [--leads L]

The run is imported once through the store API (Store.create_run), then given a realistic
mid-campaign mix with SQL: 30% answered, 15% failed (busy / no-answer / failed), 3% skipped,
50 calls live, 2% waiting for a retry, 1% waiting for calling hours, the rest queued; one
calls row per dialled lead; the run `running`, driven by this (live) process.

Timed: the whole `dialer status RUN --json --db DB` process, wall time, median of 5 after one
warm-up (a warm page cache, as on a machine that just wrote the run), and the same snapshot
in-process (runner.snapshot), to split start-up from the queries. Every statement `status`
executes is captured (sqlite3 trace callback), timed alone and shown with EXPLAIN QUERY PLAN.
Quick: 250,000 leads.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    PY,
    clean_env,
    e164_numbers,
    header,
    make_leads,
    median,
    ms,
    note,
    scratch,
    timed,
    verdict,
)

MIX = [  # (share of leads in 1000ths, SQL SET clause)
    (300, "state='completed', outcome='answered', attempts=1"),
    (50, "state='failed', outcome='busy', attempts=1"),
    (80, "state='failed', outcome='no-answer', attempts=1"),
    (20, "state='failed', outcome='failed', attempts=1"),
    (15, "state='skipped', skip_reason='invalid-number', skip_detail='not a valid number'"),
    (10, "state='skipped', skip_reason='duplicate', skip_detail='already on line 2'"),
    (5, "state='skipped', skip_reason='do-not-call', skip_detail='on the do-not-call list'"),
    (20, "state='queued', wait='retry', next_at=:later, attempts=1"),
    (10, "state='queued', wait='hours', next_at=:tomorrow"),
]


def build(db: Path, leads: int) -> int:
    from dialer_cli.store import Store

    store = Store.open(db)
    now = time.time()
    run_id = store.create_run(
        source="leads.csv",
        source_key="sha256:bench",
        leads=make_leads(e164_numbers(leads)),
        target="simulated",
        base_url=None,
        from_number="+15005550006",
        concurrency=50,
        settings={"dialing": {"concurrency": 50}},
        now=now - 3600,
    )
    values = {"later": now + 900, "tomorrow": now + 50_000, "now": now}
    with store.transaction() as conn:
        low = 0
        for share, assignment in MIX:
            conn.execute(
                f"UPDATE jobs SET {assignment}, updated_at=:now WHERE run_id=:run "
                f"AND (id * 7919) % 1000 >= :low AND (id * 7919) % 1000 < :high",
                {**values, "run": run_id, "low": low, "high": low + share},
            )
            low += share
        conn.execute(
            "UPDATE jobs SET state='calling', token=lower(hex(randomblob(16))), "
            "twilio_status='in-progress', call_sid='CA'||lower(hex(randomblob(16))), attempts=1 "
            "WHERE id IN (SELECT id FROM jobs WHERE run_id=? AND state='queued' AND next_at IS "
            "NULL ORDER BY id LIMIT 50)",
            (run_id,),
        )
        conn.execute(
            "INSERT INTO calls (token, job_id, run_id, to_number, from_number, claimed_at, "
            "result, call_sid, twilio_status, started_at, ended_at, duration_s) "
            "SELECT coalesce(token, lower(hex(randomblob(16)))), id, run_id, e164, "
            "'+15005550006', :now - 60, 'created', 'CA'||lower(hex(randomblob(16))), "
            "coalesce(twilio_status, CASE outcome WHEN 'answered' THEN 'completed' ELSE outcome "
            "END), :now - 55, CASE WHEN state='calling' THEN NULL ELSE :now END, 42 "
            "FROM jobs WHERE run_id=:run AND attempts > 0",
            {**values, "run": run_id},
        )
        conn.execute(
            "UPDATE runs SET status='running', owner_id='bench', owner_pid=?, owner_host=?, "
            "heartbeat_at=?, started_at=? WHERE id=?",
            (os.getpid(), socket.gethostname(), now + 3600, now - 3600, run_id),
        )
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return run_id


def statements(db: Path, run_id: int) -> list[str]:
    """Every SQL statement runner.snapshot executes (bound values expanded)."""
    from dialer_cli import runner
    from dialer_cli.store import Store

    store = Store.open(db, readonly=True)
    seen: list[str] = []
    store.conn.set_trace_callback(seen.append)
    runner.snapshot(store, run_id, time.time())
    store.conn.set_trace_callback(None)
    store.close()
    return [s for s in seen if s.lstrip().upper().startswith(("SELECT", "WITH"))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/status_scale.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="250,000 leads")
    parser.add_argument("--leads", type=int, default=None)
    args = parser.parse_args(argv)
    leads = args.leads or (250_000 if args.quick else 1_000_000)

    from dialer_cli import runner
    from dialer_cli.store import Store

    header("status at scale (bench/status_scale.py)")
    with scratch("dialer-bench-status-") as tmp:
        db = tmp / "dialer.db"
        began = time.perf_counter()
        run_id = build(db, leads)
        note(
            f"run of {leads:,} leads built in {time.perf_counter() - began:.1f} s; "
            f"database {db.stat().st_size / 1e6:.0f} MB"
        )
        env = clean_env(tmp)
        command = [PY, "-m", "dialer_cli", "status", str(run_id), "--json", "--db", str(db)]
        first = timed(command, env)
        if first.code != 0:
            note(f"status exited {first.code}: {first.out.strip()[-400:]}")
        note(f"status says: {first.out.strip()[:300]}")
        walls = [timed(command, env).wall for _ in range(5)]
        help_walls = [timed([PY, "-m", "dialer_cli", "--help"], env).wall for _ in range(5)]

        store = Store.open(db, readonly=True)
        inproc = []
        for _ in range(5):
            t = time.perf_counter()
            runner.snapshot(store, run_id, time.time())
            inproc.append(time.perf_counter() - t)
        per_statement = []
        for sql in statements(db, run_id):
            t = time.perf_counter()
            store.conn.execute(sql).fetchall()
            took = time.perf_counter() - t
            plan = [row[3] for row in store.conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            per_statement.append((took, sql, plan))
        store.close()

    note(
        f"status runs: {', '.join(f'{w:.3f}' for w in walls)} s; `--help` for comparison: "
        f"median {median(help_walls):.3f} s"
    )
    verdict(
        f"dialer status --json, {leads:,} leads (median of 5)",
        f"{median(walls):.3f} s",
        "<= 0.5 s",
        median(walls) <= 0.5,
    )
    verdict("the same snapshot in-process (median of 5)", ms(median(inproc)), "measure", None)
    note("statements of one snapshot, each timed alone, with EXPLAIN QUERY PLAN:")
    for took, sql, plan in per_statement:
        note(f"  {ms(took):>10}  {' '.join(sql.split())[:150]}")
        for line in plan:
            note(f"              plan: {line}")


if __name__ == "__main__":
    main()
