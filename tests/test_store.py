"""The SQLite state machine under real concurrency: separate processes on one database file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

from dialer_cli.store import SCHEMA_VERSION, Store
from tests.conftest import ROOT, make_leads, new_run

OPEN = textwrap.dedent(
    """
    import sys
    from dialer_cli.store import Store
    Store.open(sys.argv[1]).close()
    """
)

CLAIMER = textwrap.dedent(
    """
    import sys, time
    from dialer_cli.store import Store
    from dialer_cli.models import CallInfo
    store = Store.open(sys.argv[1])
    run_id, owner = int(sys.argv[2]), sys.argv[3]
    done = 0
    while done < 40:
        claim = store.claim(run_id, owner, time.time(), lambda to: "+15005550006")
        if claim is None:
            time.sleep(0.001)
            continue
        time.sleep(0.002)  # the create request
        store.release(claim.token, 0, "test", time.time())
        done += 1
    """
)


def test_processes_opening_a_new_database_at_once_all_succeed(tmp_path):
    path = tmp_path / "new.db"
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN, str(path)], cwd=ROOT, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    assert [p.wait(30) for p in procs] == [0, 0, 0, 0], [p.stderr.read() for p in procs]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_four_processes_claiming_never_exceed_the_account_cap(tmp_path):
    """The seed's promise across processes: N counts dialing jobs of every run of the account."""
    path = tmp_path / "d.db"
    store = Store.open(path)
    runs = [new_run(store, make_leads(50, start=100 + 50 * i), concurrency=3) for i in range(4)]
    for i, run_id in enumerate(runs):
        store.take_over(run_id, f"owner-{i}", 1, "h", 0)
    store.conn.executescript(
        """
        CREATE TABLE peak (n INTEGER);
        CREATE TRIGGER count_live AFTER UPDATE OF state ON jobs
        BEGIN
          INSERT INTO peak SELECT count(*) FROM jobs WHERE state IN ('dialing','calling');
        END;
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, str(path), str(run_id), f"owner-{i}"],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )
        for i, run_id in enumerate(runs)
    ]
    assert [p.wait(120) for p in procs] == [0] * 4, [p.stderr.read() for p in procs]
    peak, claims = store.conn.execute("SELECT max(n), count(*) FROM peak").fetchone()
    assert peak == 3
    assert claims == 4 * 40 * 2  # every claim and every release was counted
