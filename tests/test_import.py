"""An import never blocks a running campaign, and is still all or nothing.

- The new run is `importing` until its last lead is in: `runs`, `status` and claims do not see
  it, though its chunks are committed one by one.
- A failed import leaves nothing; a killed one (kill -9) leaves garbage that is never dialled,
  is swept by the next import, and does not make the next `start` of the source exit 4.
- A second start of the source while the first one imports exits 4 naming the run.
- A campaign dialling from the same database is never blocked longer than about a chunk.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from dialer_cli import intake
from dialer_cli import store as store_module
from dialer_cli.errors import BusyError, InputError, LeadsError
from dialer_cli.models import Lead, RunStatus
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID
from dialer_cli.store import Store
from tests.conftest import FROM, ROOT, T0, make_leads, new_run, wait_for
from tests.test_crash import child_env

SOURCE = SimpleNamespace(name="leads.csv")
TARGET = SimpleNamespace(simulated=False)


def create(store: Store, leads: Iterator[Lead] | list[Lead], key: str = "sha256:leads") -> int:
    """`create_run` as `dialer start` calls it for a CSV file: guarded by refuse_rerun."""
    return store.create_run(
        source="leads.csv",
        source_key=key,
        leads=leads,
        target=DEFAULT_ACCOUNT_SID,
        base_url=None,
        from_number=FROM,
        concurrency=3,
        settings={},
        now=T0,
        guard=lambda latest: intake.refuse_rerun(latest, SOURCE, TARGET),  # type: ignore[arg-type]
    )


def then(leads: list[Lead], action) -> Iterator[Lead]:
    """The leads, with `action()` run after all but the last: the import is half done."""
    yield from leads[:-1]
    action()
    yield leads[-1]


def rows(db: Path, sql: str) -> list[tuple]:
    """Read the database as another process would (never creating it); [] before its schema."""
    if not db.exists():
        return []
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


def test_the_run_stays_invisible_until_its_last_lead_is_in(
    tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(store_module, "IMPORT_CHUNK_ROWS", 100)  # 50 chunks, 4 may wait
    seen: dict[str, object] = {}

    def look() -> None:
        other = Store.open(store.path, timeout=1)
        try:
            seen["runs"] = other.runs()
            seen["latest"] = other.latest_run(target=DEFAULT_ACCOUNT_SID, source_key="sha256:leads")
            with pytest.raises(InputError, match="no run 1"):
                other.get_run(1)
        finally:
            other.close()
        seen["committed"] = rows(tmp_path / "dialer.db", "SELECT count(*) FROM jobs")[0][0]

    run_id = create(store, then(make_leads(5000), look))
    assert seen["runs"] == [] and seen["latest"] is None
    assert seen["committed"] > 0, "the import held the write lock from first lead to last"
    assert [r.id for r in store.runs()] == [run_id]
    assert store.get_run(run_id).status == RunStatus.STOPPED
    assert store.counts(run_id)["queued"] == 5000


def test_a_failed_import_leaves_nothing_behind(tmp_path: Path, store: Store):
    def fail() -> None:
        raise LeadsError("leads.csv: line 5001: not valid UTF-8")

    with pytest.raises(LeadsError, match="line 5001"):
        create(store, then(make_leads(5000), fail))
    assert rows(tmp_path / "dialer.db", "SELECT count(*) FROM runs") == [(0,)]
    assert rows(tmp_path / "dialer.db", "SELECT count(*) FROM jobs") == [(0,)]


def test_a_second_start_while_the_first_imports_exits_4_naming_the_run(store: Store):
    refused: list[str] = []

    def second_start() -> None:
        other = Store.open(store.path, timeout=1)
        try:
            with pytest.raises(BusyError) as exc:
                create(other, make_leads(3))
            refused.append(str(exc.value))
        finally:
            other.close()

    run_id = create(store, then(make_leads(3000), second_start))
    assert refused == [
        f"leads.csv already has an unfinished run {run_id} (being imported by another process); "
        "wait for it to finish or pass --new"
    ]
    assert [r.id for r in store.runs()] == [run_id]


def test_a_dead_import_is_swept_and_the_next_start_imports(tmp_path: Path, store: Store):
    """What kill -9 leaves: an `importing` run whose import lock nobody holds."""
    store.conn.execute(
        "INSERT INTO runs (id, source, source_key, status, concurrency, target, created_at) "
        "VALUES (1, 'leads.csv', 'sha256:leads', 'importing', 3, ?, ?)",
        (DEFAULT_ACCOUNT_SID, T0),
    )
    store.conn.executemany(
        "INSERT INTO jobs (run_id, line, phone, e164, fields, state) VALUES (1, ?, ?, ?, '{}', "
        "'queued')",
        [(lead.line, lead.phone, lead.e164) for lead in make_leads(20)],
    )
    assert store.runs() == []
    run_id = create(store, make_leads(3))
    assert rows(tmp_path / "dialer.db", "SELECT id, status FROM runs") == [(run_id, "stopped")]
    assert rows(tmp_path / "dialer.db", "SELECT DISTINCT run_id FROM jobs") == [(run_id,)]


# -- real processes -------------------------------------------------------------------------------


def big_csv(path: Path, n: int) -> Path:
    """n distinct valid numbers (212 NXX XXXX), in the columns a real list has."""
    with path.open("w") as f:
        f.write("name,phone,email,city\n")
        for i in range(n):
            f.write(f"Lead {i},+1212{200 + i // 10000:03d}{i % 10000:04d},l{i}@example.com,Salem\n")
    return path


def import_proc(csv: Path, db: Path, out: Path) -> subprocess.Popen:
    """`dialer start` that imports and then stops before dialling anybody (exit 3)."""
    with out.open("w") as o:
        return subprocess.Popen(
            [sys.executable, "-m", "dialer_cli", "start", str(csv), "--simulate",
             "--max-duration", "0", "--json", "--db", str(db)],
            stdout=o, stderr=subprocess.STDOUT, env=child_env(), cwd=ROOT,
        )  # fmt: skip


@pytest.mark.slow
def test_a_campaign_claims_while_a_big_import_runs(tmp_path: Path):
    """Each claim waits at most for one chunk, never for the whole import."""
    db = tmp_path / "dialer.db"
    store = Store.open(db)
    run_id = new_run(store, make_leads(50), concurrency=1000)
    store.take_over(run_id, "campaign", 1, "host", time.time())  # dialling: a fresh heartbeat
    proc = import_proc(big_csv(tmp_path / "big.csv", 100_000), db, tmp_path / "import.out")
    waits: list[float] = []
    try:
        while proc.poll() is None:
            began = time.monotonic()
            claim = store.claim(run_id, "campaign", time.time(), pick_from=lambda _: FROM)
            waits.append(time.monotonic() - began)
            assert claim is not None
            store.release(claim.token, 0.0, "released", time.time())
            time.sleep(0.02)  # a campaign's pace (50 claims a second), not a wait for anything
    finally:
        rc = proc.wait(120)
        store.close()
    assert rc == 3, (tmp_path / "import.out").read_text()[-500:]
    assert len(waits) > 10
    assert max(waits) < 1.0, f"a claim waited {max(waits):.2f} s for the import"


@pytest.mark.slow
def test_kill_9_mid_import_leaves_nothing_dialled_and_the_next_start_works(tmp_path: Path):
    db, csv = tmp_path / "dialer.db", big_csv(tmp_path / "big.csv", 100_000)
    proc = import_proc(csv, db, tmp_path / "first.out")
    try:
        wait_for(
            lambda: rows(
                db, "SELECT 1 FROM runs r JOIN jobs j ON j.run_id = r.id WHERE r.status='importing'"
            ),
            60,
            "chunks of the import to be committed",
        )
    finally:
        proc.kill()
        proc.wait(30)
    dead = rows(db, "SELECT id FROM runs")[0][0]
    listed = subprocess.run(
        [sys.executable, "-m", "dialer_cli", "runs", "--json", "--db", str(db)],
        capture_output=True, text=True, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    resumed = subprocess.run(
        [sys.executable, "-m", "dialer_cli", "resume", str(dead), "--db", str(db)],
        capture_output=True, text=True, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    assert resumed.returncode == 2 and f"no run {dead}" in resumed.stderr
    again = import_proc(csv, db, tmp_path / "second.out")
    assert again.wait(120) == 3, (tmp_path / "second.out").read_text()[-500:]
    (run_id, status), *others = rows(db, "SELECT id, status FROM runs")
    assert others == [] and status == RunStatus.STOPPED
    assert rows(db, "SELECT run_id, count(*) FROM jobs GROUP BY run_id") == [(run_id, 100_000)]
    assert rows(db, "SELECT count(*) FROM calls") == [(0,)]


def test_chunks_queued_behind_a_slow_write_go_in_together_each_lead_once_in_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
):
    """With no run being dialled, the writer takes every chunk already waiting in one
    transaction (fewer handovers of the GIL, fewer commits): no lead lost, none twice."""
    monkeypatch.setattr(store_module, "IMPORT_CHUNK_ROWS", 100)
    writes: list[int] = []
    insert = store_module._ChunkWriter._insert

    def slow_first(self, conn, run_id, now, chunk):  # the first write waits for a full queue
        if not writes:
            wait_for(self._queue.full, 30, "the chunks to queue up")
        writes.append(len(json.loads(chunk)))
        insert(self, conn, run_id, now, chunk)

    monkeypatch.setattr(store_module._ChunkWriter, "_insert", slow_first)
    run_id = create(store, make_leads(2000))
    assert len(writes) < 20 and max(writes) > 100, writes  # chunks of 100, written together
    assert sum(writes) == 2000
    lines = store.read("SELECT line FROM jobs WHERE run_id=? ORDER BY id", (run_id,))
    assert [r[0] for r in lines] == list(range(2, 2002))
    assert store.counts(run_id)["queued"] == 2000
