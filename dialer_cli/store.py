"""The SQLite state machine: runs, jobs (one per lead) and calls (one per create attempt).

Every rule that keeps the promises lives in a write transaction here: the claim counts the
calls in flight and takes the next lead in one `BEGIN IMMEDIATE`, and it is committed (with
`synchronous=FULL`) before the create request leaves, so a crash can never hide a call.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dialer_cli import lease, migrations
from dialer_cli.errors import InputError, StoreError
from dialer_cli.migrations import LIVE
from dialer_cli.models import (
    IN_FLIGHT,
    OUTCOME_OF_STATUS,
    TWILIO_TERMINAL,
    CallInfo,
    Claim,
    JobState,
    Lead,
    LiveCall,
    Outcome,
    Run,
    RunStatus,
)

if TYPE_CHECKING:
    import sqlite_utils

SCHEMA_VERSION = migrations.latest()
TERMINAL = "('completed','busy','failed','no-answer','canceled')"  # TWILIO_TERMINAL, for SQL
DRIVER_STALE_S = 60.0  # a heartbeat older than this: the run's driver is not dialling
IMPORTING = "importing"  # a run whose leads are still being written: seen by nothing but imports
IMPORT_CHUNK_S = 0.02  # how long one import chunk may hold the write lock (a claim waits for it)
IMPORT_CHUNK_ROWS = 1_000  # at most: a chunk in flight costs about 2.5 kB a row (Python + SQLite)
IMPORT_PAUSE_S = 0.02  # the import's pause between two chunks, for a waiting claim to get in
IMPORT_LOOK_S = 0.25  # how often the import looks whether a run is being dialled
IMPORT_QUEUE = 4  # encoded chunks waiting for the writer (JSON text: about 200 bytes a row)


def import_lock_name(run_id: int) -> str:
    """The OS lock an importer holds while its run is `importing` (dropped if it is killed)."""
    return f"import-{run_id}"


_RUN_COLUMNS = (
    "id, source, source_key, campaign, status, concurrency, target, base_url, from_number, "
    "settings, error, owner_pid, owner_host, heartbeat_at, stop_mode, created_at, started_at, "
    "finished_at"
)


def _run(row: sqlite3.Row) -> Run:
    data = dict(row)
    data["settings"] = json.loads(data["settings"] or "{}")
    return Run(**data)


def _explain(exc: sqlite3.Error, path: str) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"database {path} is locked by another process; nothing was changed, try again"
    if "full" in text:
        return f"database {path}: disk full; nothing recorded was lost, free space and resume"
    if "readonly" in text or "read-only" in text:
        return f"database {path} cannot be written (read-only)"
    if "unable to open" in text:
        return f"cannot open database {path}"
    return f"database {path}: {text}"


def unwritable(path: str | Path) -> str | None:
    """Why the database cannot be written, in the words a user acts on; None if it can be."""
    folder = Path(path).resolve().parent
    if not os.access(folder, os.W_OK):
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only file system"
        return f"no write permission on its folder {folder}"
    if Path(path).exists() and not os.access(path, os.W_OK):
        return "no write permission on the file"
    return None


# A chunk of jobs is one JSON array of rows, inserted by one statement: SQLite parses it and
# upkeeps the indexes in C with the GIL released, while Python builds the next chunk.
_INSERT_CHUNK = (
    "INSERT INTO jobs (run_id, line, phone, e164, name, fields, state, skip_reason, skip_detail, "
    "tz, updated_at) SELECT ?1, {}, ?2 FROM json_each(?3)".format(
        ", ".join(f"json_extract(value, '$[{i}]')" for i in range(9))  # SQLite 3.35 has no ->>
    )
)


# A write-back run's leads skipped at import (invalid, duplicate, do-not-call) go to the outbox
# in the transaction that writes them; every later final state is queued by a trigger on jobs.
_QUEUE_SKIPPED = (
    "INSERT OR IGNORE INTO writeback (job_id, run_id) SELECT id, run_id FROM jobs NOT INDEXED "
    "WHERE id > ? AND state = 'skipped'"
)

_DIALLING = "SELECT EXISTS (SELECT 1 FROM runs WHERE status='running' AND heartbeat_at > ?)"


def _join(chunks: list[str]) -> str:
    """JSON arrays made one ("[a,b]" and "[c]" give "[a,b,c]")."""
    return chunks[0] if len(chunks) == 1 else "[" + ",".join(c[1:-1] for c in chunks) + "]"


class _ChunkWriter:
    """Inserts an import's chunks from a thread of its own, each in a transaction that holds
    the write lock about IMPORT_CHUNK_S. While a run is being dialled from the database, it
    then pauses IMPORT_PAUSE_S so that a claim waiting in SQLite's busy handler (which retries
    every 25 ms at first) gets the lock in between. While none is, the chunks already queued
    (up to IMPORT_QUEUE) go in together: fewer transactions, fewer GIL handovers.

    Chunks commit with synchronous=NORMAL (no fsync): one lost to a power cut leaves an
    unpublished run, swept like a killed import; the FULL commit that publishes the run syncs
    the whole WAL. `size` (rows per chunk) adapts to the time the last chunk held the lock.
    """

    def __init__(
        self, path: str, conn: sqlite3.Connection, run_id: int, now: float, writeback: bool
    ):
        self.size = IMPORT_CHUNK_ROWS
        self._writeback = writeback
        self._path = path
        self._queue: queue.Queue[str | None] = queue.Queue(maxsize=IMPORT_QUEUE)
        self._error: BaseException | None = None
        self._abandoned = False
        self._importer_tid = threading.get_native_id()
        self._nice, self._niced = os.getpriority(os.PRIO_PROCESS, self._importer_tid), False
        timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0] / 1000
        self._thread = threading.Thread(
            target=self._run, args=(timeout, run_id, now), name="import-writer", daemon=True
        )
        self._thread.start()

    def put(self, chunk: str) -> None:
        self._offer(chunk)
        if self._error is not None:
            raise self._error

    def close(self, abandon: bool = False) -> None:
        """Wait for every chunk to be in (or, abandoning, for the one being written)."""
        self._abandoned = abandon
        self._offer(None)
        self._thread.join()
        self._restore_cpu()
        if self._error is not None and not abandon:
            raise self._error

    def _yield_cpu(self) -> None:
        """A run is being dialled: its loop comes first for the CPU too (the import's two
        threads would take both cores of a small machine), so both threads run at nice +10
        until the import ends (Linux sets niceness per thread)."""
        if self._niced:
            return
        self._niced = True
        for tid in (self._importer_tid, threading.get_native_id()):
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + 10)

    def _restore_cpu(self) -> None:
        """Back to the importing thread's niceness, where the OS allows it (a process may not
        lower its niceness without privilege, then the rest of it runs at +10)."""
        if self._niced:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, self._importer_tid, self._nice)

    def _offer(self, chunk: str | None) -> None:
        while self._thread.is_alive():  # a writer that failed takes nothing more
            try:
                self._queue.put(chunk, timeout=0.05)
                return
            except queue.Full:
                continue

    def _resize(self, held: float | None) -> None:
        """Rows in the next chunk: as many as hold the lock about IMPORT_CHUNK_S while a run is
        being dialled (`held`: how long the last one did), else the most (chunks are joined)."""
        if held is None:
            self.size = IMPORT_CHUNK_ROWS
            return
        fit = int(self.size * IMPORT_CHUNK_S / max(held, 1e-4))
        self.size = max(100, min(2 * self.size, IMPORT_CHUNK_ROWS, fit))

    def _join_waiting(self, chunk: str) -> tuple[str, bool]:
        """The chunk and those already queued behind it as one JSON array (strings cost 200
        bytes a row: the rows' objects are gone), and whether the last chunk came."""
        chunks = [chunk]
        while True:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is None:
                return _join(chunks), True
            chunks.append(more)
        return _join(chunks), False

    def _insert(self, conn: sqlite3.Connection, run_id: int, now: float, chunk: str) -> None:
        """One chunk, in as few calls as possible: each call gives up the GIL and waits up to
        a switch interval to get it back from the encoding thread (5 calls a chunk cost a 1M
        import 2 s). Without write-back the INSERT is its own transaction (autocommit)."""
        if not self._writeback:
            conn.execute(_INSERT_CHUNK, (run_id, now, chunk))
            return
        conn.execute("BEGIN IMMEDIATE")
        last = conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0]
        conn.execute(_INSERT_CHUNK, (run_id, now, chunk))
        conn.execute(_QUEUE_SKIPPED, (last,))
        conn.execute("COMMIT")

    def _run(self, timeout: float, run_id: int, now: float) -> None:
        conn = sqlite3.connect(self._path, timeout=timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            dialling, look_at, ended = False, 0.0, False
            while not ended and (chunk := self._queue.get()) is not None:
                if not dialling:  # nobody waits for the lock: fewer, larger transactions
                    chunk, ended = self._join_waiting(chunk)
                if self._abandoned:
                    break
                began = time.perf_counter()
                self._insert(conn, run_id, now, chunk)
                self._resize(time.perf_counter() - began if dialling else None)
                if began >= look_at:  # a campaign may start dialling during the import
                    look_at = began + IMPORT_LOOK_S
                    stale = time.time() - DRIVER_STALE_S
                    dialling = conn.execute(_DIALLING, (stale,)).fetchone()[0]
                if dialling:
                    self._yield_cpu()
                    time.sleep(IMPORT_PAUSE_S)
        except sqlite3.Error as exc:
            self._error = StoreError(_explain(exc, self._path))
        except BaseException as exc:  # pragma: no cover - reported to the importing thread
            self._error = exc
        finally:
            conn.close()  # rolls back a chunk left open by an error


class Store:
    """All reads and writes of dialer state. Returns models, never cursors."""

    def __init__(self, conn: sqlite3.Connection, path: str):
        self.conn = conn
        self.path = path

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, *, readonly: bool = False, timeout: float = 30.0) -> Store:
        """Open (and create or migrate) the database; read-only opens never write."""
        path = str(path)
        if sqlite3.sqlite_version_info < (3, 35, 0):
            raise StoreError(f"SQLite {sqlite3.sqlite_version} is too old; dialer needs 3.35+")
        if Path(path).is_dir():
            raise StoreError(f"cannot open database {path}: it is a directory")
        try:
            if readonly:
                if not Path(path).exists():
                    raise InputError(f"no database at {path}; start a run first or pass --db")
                store = cls._open_readonly(path, timeout)
            else:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
                conn.row_factory = sqlite3.Row
                store = cls(conn, path)
                store._prepare(readonly)
        except sqlite3.Error as exc:
            why = None if readonly else unwritable(path)
            if why:
                raise StoreError(f"database {path} cannot be written: {why}") from None
            raise StoreError(_explain(exc, path)) from None
        except OSError as exc:
            raise StoreError(f"cannot open database {path}: {exc.strerror}") from None
        return store

    @classmethod
    def _open_readonly(cls, path: str, timeout: float) -> Store:
        """Read without writing anything, even beside the file. A WAL database needs its -shm
        file, which a read-only folder cannot get: with no -wal file either, every change is in
        the database file itself, so it is read as immutable (no -shm, no locks)."""
        uri = Path(path).resolve().as_uri()
        for mode in ("mode=ro", "immutable=1"):
            conn = sqlite3.connect(f"{uri}?{mode}", uri=True, timeout=timeout, isolation_level=None)
            conn.row_factory = sqlite3.Row
            store = cls(conn, path)
            try:
                store._prepare(readonly=True)
                return store
            except sqlite3.OperationalError:
                conn.close()
                if not unwritable(path) or Path(f"{path}-wal").exists():
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _prepare(self, readonly: bool) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} was written by a newer dialer (schema {version}, "
                f"this one knows {SCHEMA_VERSION}); upgrade dialer"
            )
        if readonly:
            if version < SCHEMA_VERSION:
                raise StoreError(f"database {self.path} needs a migration; run any write command")
            return
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")  # a claim lost to power loss is a double dial
        self.conn.execute("PRAGMA foreign_keys=ON")
        if version < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        # Two processes may open a new database at once: the version is re-read under the lock.
        with self.transaction():
            migrations.migrate(self.conn)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front (no SQLITE_BUSY_SNAPSHOT later)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(_explain(exc, self.path)) from None

    def read(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self.conn.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(_explain(exc, self.path)) from None

    # -- runs ---------------------------------------------------------------------------------

    def create_run(
        self,
        *,
        source: str,
        source_key: str,
        leads: Iterable[Lead],
        target: str,
        base_url: str | None,
        from_number: str | None,
        concurrency: int,
        settings: dict[str, object],
        now: float,
        campaign: str | None = None,
        skip: Callable[[Lead], tuple[str, str] | None] | None = None,
        zones: Callable[[Lead], str | None] | None = None,
        guard: Callable[[Run | None], None] | None = None,
    ) -> int:
        """Import every lead and create the run: all or nothing, yet never blocking a campaign.

        The run is inserted as `importing` (invisible to claims, `runs` and `status`), its leads
        follow in chunks that each hold the write lock about IMPORT_CHUNK_S, and one last commit
        makes it a `stopped` run. While importing, the process holds the OS lock
        `import-<run id>`: a failed import deletes what it wrote; a killed one (the OS dropped
        its lock) is garbage that the next import sweeps away.

        `skip` may refuse a lead (do-not-call, a template it cannot fill: raise to abort);
        `zones` names the time zones whose calling hours the lead must be dialled within.
        `guard` sees the latest run of the same source and target (a live import included) in
        the transaction that inserts the run, and raises to refuse: two starts of one source
        cannot both pass it, since the second one's check waits for the first one's commit.
        """
        self.sweep_imports()
        run_id, lock = self._insert_importing_run(
            guard=guard,
            target=target,
            source_key=source_key,
            values=(source, source_key, campaign, IMPORTING, concurrency, target, base_url)
            + (from_number, json.dumps(settings), now),
        )
        with lock:
            try:
                rows = self._job_rows(leads, skip, zones)
                self._insert_chunks(run_id, rows, now, settings.get("writeback") is not None)
                with self.transaction() as conn:  # synchronous=FULL: every chunk is durable too
                    conn.execute("UPDATE runs SET status=? WHERE id=?", (RunStatus.STOPPED, run_id))
            except BaseException:
                self._discard(run_id)
                raise
        return run_id

    def _insert_importing_run(
        self,
        guard: Callable[[Run | None], None] | None,
        target: str,
        source_key: str,
        values: tuple[Any, ...],
    ) -> tuple[int, lease.NamedLock]:
        """The guard's check and the `importing` run in one transaction, and the run's import
        lock taken before that COMMIT: nobody ever sees the run without its lock held."""
        lock: lease.NamedLock | None = None
        try:
            with self.transaction() as conn:
                if guard is not None:
                    guard(self._latest_alive(target, source_key))
                cur = conn.execute(
                    "INSERT INTO runs (source, source_key, campaign, status, concurrency, target, "
                    "base_url, from_number, settings, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    values,
                )
                run_id = int(cur.lastrowid or 0)
                lock = lease.NamedLock(self.path, import_lock_name(run_id))
                lock.acquire(f"run {run_id} is being imported by another process")
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        return run_id, lock

    def _insert_chunks(
        self, run_id: int, rows: Iterator[list[Any]], now: float, writeback: bool
    ) -> None:
        """Encode the rows a chunk at a time while a `_ChunkWriter` inserts the previous one."""
        writer = _ChunkWriter(self.path, self.conn, run_id, now, writeback)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.001)  # the writer holds the write lock while it waits for the GIL
        try:
            while batch := list(islice(rows, writer.size)):
                writer.put(json.dumps(batch, ensure_ascii=False, check_circular=False))
        except BaseException:
            writer.close(abandon=True)
            raise
        finally:
            sys.setswitchinterval(switch)
        writer.close()

    def _latest_alive(self, target: str, source_key: str) -> Run | None:
        """The latest run of the source, skipping imports whose process died (garbage)."""
        rows = self.read(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE source_key=? AND target=? ORDER BY id DESC",
            (source_key, target),
        )
        for row in rows:
            if row["status"] != IMPORTING or self._importer_alive(row["id"]):
                return _run(row)
        return None

    def _importer_alive(self, run_id: int) -> bool:
        return lease.is_locked(self.path, import_lock_name(run_id))

    def sweep_imports(self) -> None:
        """Delete what imports killed midway left behind (their OS lock is gone)."""
        for (run_id,) in self.read("SELECT id FROM runs WHERE status=?", (IMPORTING,)):
            if not self._importer_alive(run_id):
                self._discard(run_id)

    def _discard(self, run_id: int) -> None:
        """Delete an unpublished run in chunks that hold the lock briefly (it is invisible
        meanwhile; killed halfway, it is still an unpublished run, swept later)."""
        size = 5000
        while True:
            began = time.perf_counter()
            with self.transaction() as conn:
                row = conn.execute("SELECT status FROM runs WHERE id=?", (run_id,)).fetchone()
                if row is None or row[0] != IMPORTING:
                    return  # gone already, or published by its live importer
                conn.execute("DELETE FROM writeback WHERE run_id=?", (run_id,))  # skipped rows
                conn.execute("DELETE FROM calls WHERE run_id=?", (run_id,))  # none, unless dialled
                cur = conn.execute(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE run_id=? LIMIT ?)",
                    (run_id, size),
                )
                if cur.rowcount < size:
                    conn.execute("DELETE FROM runs WHERE id=?", (run_id,))
                    return
            held = max(time.perf_counter() - began, 1e-4)
            size = max(100, min(4 * size, int(size * IMPORT_CHUNK_S / held)))

    @staticmethod
    def _job_rows(
        leads: Iterable[Lead],
        skip: Callable[[Lead], tuple[str, str] | None] | None,
        zones: Callable[[Lead], str | None] | None,
    ) -> Iterator[list[Any]]:
        """Each lead as an element of a chunk's JSON array, in _INSERT_CHUNK's column order
        (one generator, names bound once: it runs a million times an import)."""
        queued, skipped = JobState.QUEUED.value, JobState.SKIPPED.value
        for lead in leads:
            reason, detail, fields = lead.skip_reason, lead.skip_detail, lead.fields
            if reason is None and skip is not None and (rule := skip(lead)) is not None:
                reason, detail = rule
            state = skipped if reason else queued
            tz = zones(lead) if zones is not None and state == queued else None
            name = fields.get("name") or lead.name  # most sources: no property, no loop
            yield [lead.line, lead.phone, lead.e164, name, fields, state, reason, detail, tz]

    def delete_run(self, run_id: int) -> None:
        """Remove a run nobody dialled (a declined confirmation): unpublished first, so it
        vanishes at once, then deleted in chunks."""
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET status=? WHERE id=?", (IMPORTING, run_id))
        self._discard(run_id)

    def get_run(self, run_id: int) -> Run:
        rows = self.read(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id=? AND status!=?", (run_id, IMPORTING)
        )
        if not rows:
            raise InputError(f"no run {run_id} in {self.path}; `dialer runs` lists them")
        return _run(rows[0])

    def runs(self) -> list[Run]:
        rows = self.read(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE status!=? ORDER BY id DESC", (IMPORTING,)
        )
        return [_run(r) for r in rows]

    def latest_run(
        self, *, target: str, source_key: str | None = None, campaign: str | None = None
    ) -> Run | None:
        column, value = ("campaign", campaign) if campaign else ("source_key", source_key)
        rows = self.read(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE {column}=? AND target=? AND status!=? "
            f"ORDER BY id DESC LIMIT 1",
            (value, target, IMPORTING),
        )
        return _run(rows[0]) if rows else None

    def take_over(
        self,
        run_id: int,
        owner_id: str,
        pid: int,
        host: str,
        now: float,
        stop_mode: str | None = None,
    ) -> Run:
        """Make this process the run's driver (the caller holds the run's OS lock).

        Attempts left `pending` by a dead driver may have reached Twilio: they become `unknown`
        and are reconciled before anything new is dialled. With `stop_mode` the driver only
        settles what is in flight (`stop --cancel-active`, `cleanup-stuck`).
        """
        status = RunStatus.STOPPING if stop_mode else RunStatus.RUNNING
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status=?, owner_id=?, owner_pid=?, owner_host=?, heartbeat_at=?, "
                "stop_mode=?, error=NULL, finished_at=NULL, started_at=coalesce(started_at, ?) "
                "WHERE id=?",
                (status, owner_id, pid, host, now, stop_mode, now, run_id),
            )
            conn.execute(
                "UPDATE calls SET result='unknown' WHERE run_id=? AND result='pending'", (run_id,)
            )
            # A machine message a dead driver may have sent: never sent again (voicemail.py).
            conn.execute(
                "UPDATE calls SET voicemail='unconfirmed' WHERE run_id=? AND voicemail='pending'",
                (run_id,),
            )
        return self.get_run(run_id)

    def set_concurrency(self, run_id: int, concurrency: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET concurrency=? WHERE id=?", (concurrency, run_id))

    def heartbeat(self, run_id: int, owner_id: str, now: float) -> bool:
        """Refresh the lease; False means another process took the run over."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE runs SET heartbeat_at=? WHERE id=? AND owner_id=?", (now, run_id, owner_id)
            )
        return cur.rowcount == 1

    def request_stop(self, run_id: int, *, cancel: bool, driver_alive: bool, now: float) -> Run:
        """Stop dialing new leads. Without a live driver there is nothing to drain: `stopped`."""
        status = RunStatus.STOPPING if driver_alive else RunStatus.STOPPED
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status=?, stop_mode=?, finished_at=CASE WHEN ?='stopped' THEN ? "
                "ELSE finished_at END WHERE id=? AND status IN ('running','stopping')",
                (status, "cancel" if cancel else "drain", status, now, run_id),
            )
        return self.get_run(run_id)

    def set_status(
        self,
        run_id: int,
        status: str,
        now: float,
        error: str | None = None,
        owner_id: str | None = None,
    ) -> None:
        """End the driver's tenure: the run's final or resumable status, and no owner."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE runs SET status=?, error=?, finished_at=?, owner_id=NULL, owner_pid=NULL "
                "WHERE id=? AND (? IS NULL OR owner_id=?)",
                (status, error, now, run_id, owner_id, owner_id),
            )

    # -- the claim ----------------------------------------------------------------------------

    def claim(
        self,
        run_id: int,
        owner_id: str,
        now: float,
        pick_from: Callable[[str], str],
        closed_zones: Collection[str] = (),
        blocked: Callable[[str], str | None] | None = None,
        closed_until: Callable[[str], float | None] | None = None,
    ) -> Claim | None:
        """Take the next lead for dialing if a slot is free, or return None.

        One `BEGIN IMMEDIATE` holds the check and the act together: the run is still running and
        still ours, the account's calls in flight (dialing *and* calling, across every run that
        dials through it) are below N, the number is not live anywhere, and it is not on the
        do-not-call list, and its calling hours hold. `closed_zones` (zone groups known to be
        outside their window) only narrows the search; `closed_until(group)`, asked for the very
        lead being claimed, is the rule: it returns when a closed group opens, None when open.
        Only after COMMIT returns may the create request be sent.
        """
        with self.transaction() as conn:
            run = conn.execute(
                "SELECT status, owner_id, concurrency, target FROM runs WHERE id=?", (run_id,)
            ).fetchone()
            if run is None or run["status"] != RunStatus.RUNNING or run["owner_id"] != owner_id:
                return None
            if self._in_flight(conn, run["target"]) >= self._limit(conn, run_id, run, now):
                return None
            job = self._next_job(conn, run_id, now, closed_zones, blocked, closed_until)
            if job is None:
                return None
            token = uuid.uuid4().hex
            from_number = pick_from(job["e164"])
            conn.execute(
                "UPDATE jobs SET state='dialing', token=?, attempts=attempts+1, next_at=NULL, "
                "wait=NULL, call_sid=NULL, twilio_status=NULL, status_at=?, updated_at=? "
                "WHERE id=?",
                (token, now, now, job["id"]),
            )
            conn.execute(
                "INSERT INTO calls (token, job_id, run_id, to_number, from_number, claimed_at) "
                "VALUES (?,?,?,?,?,?)",
                (token, job["id"], run_id, job["e164"], from_number, now),
            )
        return Claim(
            job_id=job["id"],
            run_id=run_id,
            token=token,
            to=job["e164"],
            from_number=from_number,
            attempt=job["attempts"] + 1,
            fields=json.loads(job["fields"]),
            claimed_at=now,
        )

    @staticmethod
    def _in_flight(conn: sqlite3.Connection, target: str) -> int:
        """Calls that may be live at Twilio through this account, across every run: one per lead
        being dialled or called, and one per live candidate of a lead under review (a lost
        response found twice is two calls, and both hold a line)."""
        row = conn.execute(
            f"SELECT count(*) FROM jobs j JOIN runs r ON r.id = j.run_id "
            f"LEFT JOIN calls c ON j.state = 'reviewing' AND c.job_id = j.id "
            f"AND c.result = 'candidate' AND coalesce(c.twilio_status, '') NOT IN {TERMINAL} "
            f"WHERE j.state IN {LIVE} AND r.target = ? "
            f"AND (j.state != 'reviewing' OR c.id IS NOT NULL)",
            (target,),
        ).fetchone()
        return int(row[0])

    def _limit(self, conn: sqlite3.Connection, run_id: int, run: sqlite3.Row, now: float) -> int:
        """The smallest N among the runs dialling through this account right now.

        Each run's N is a promise about the account, so while several runs dial through one
        account, the strictest holds for all. A run counts while its driver holds the run's lock
        (stalled or not: it dials again when it wakes) or while it still has calls in flight; a
        crashed run with nothing in flight no longer does.
        """
        rows = conn.execute(
            f"SELECT id, concurrency, owner_host, heartbeat_at, EXISTS (SELECT 1 FROM jobs j "
            f"WHERE j.run_id = r.id AND j.state IN {LIVE}) AS busy FROM runs r "
            f"WHERE r.target = ? AND (r.id = ? OR r.status IN ('running','stopping'))",
            (run["target"], run_id),
        ).fetchall()
        return min(
            r["concurrency"]
            for r in rows
            if r["id"] == run_id
            or r["busy"]
            or lease.driven(self.path, r["id"], r["owner_host"], r["heartbeat_at"], now)
        )

    @staticmethod
    def _next_job(
        conn: sqlite3.Connection,
        run_id: int,
        now: float,
        closed_zones: Collection[str],
        blocked: Callable[[str], str | None] | None,
        closed_until: Callable[[str], float | None] | None = None,
    ) -> sqlite3.Row | None:
        closed = list(closed_zones)
        hours = f"AND coalesce(tz, '') NOT IN ({','.join('?' * len(closed))}) " if closed else ""
        while True:
            job = conn.execute(
                f"SELECT id, e164, attempts, fields, tz FROM jobs "
                f"WHERE run_id=? AND state='queued' AND coalesce(next_at, 0) <= ? {hours}"
                f"AND e164 NOT IN (SELECT e164 FROM jobs WHERE state IN {LIVE}) "
                f"ORDER BY id LIMIT 1",
                (run_id, now, *closed),
            ).fetchone()
            if job is None:
                return None
            opens = closed_until(job["tz"]) if closed_until and job["tz"] else None
            if opens is not None:
                conn.execute(
                    "UPDATE jobs SET next_at=?, wait='hours', updated_at=? WHERE id=?",
                    (opens, now, job["id"]),
                )
                continue
            reason = (
                "do-not-call"
                if conn.execute("SELECT 1 FROM dnc WHERE e164=?", (job["e164"],)).fetchone()
                else (blocked(job["e164"]) if blocked else None)
            )
            if reason is None:
                return job
            conn.execute(
                "UPDATE jobs SET state='skipped', skip_reason=?, "
                "skip_detail='added to the do-not-call list during the run', updated_at=? "
                "WHERE id=?",
                (reason, now, job["id"]),
            )

    # -- what the create request taught us ----------------------------------------------------

    def save_sid(self, claim: Claim, info: CallInfo, now: float) -> bool:
        """Record the SID the moment Twilio answers, fenced by the claim's token."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET result='created', call_sid=?, twilio_status=? WHERE token=?",
                (info.sid, info.status, claim.token),
            )
            cur = conn.execute(
                "UPDATE jobs SET state='calling', call_sid=?, twilio_status=?, status_at=?, "
                "updated_at=? WHERE id=? AND token=? AND state='dialing'",
                (info.sid, info.status, now, now, claim.job_id, claim.token),
            )
        return cur.rowcount == 1

    def reject(self, token: str, code: int | None, message: str, now: float) -> None:
        """Twilio refused this lead (no call exists): it fails for good."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET result='rejected', error_code=?, error_message=?, ended_at=? "
                "WHERE token=?",
                (code, message, now, token),
            )
            conn.execute(
                "UPDATE jobs SET state='failed', outcome=?, error_code=?, error_message=?, "
                "updated_at=? WHERE token=? AND state='dialing'",
                (Outcome.REJECTED, code, message, now, token),
            )

    def release(self, token: str, next_at: float, result: str, now: float) -> None:
        """No call exists for this attempt (429, or reconciliation found none): queue the lead
        again without counting the attempt."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET result=?, ended_at=? WHERE token=?", (result, now, token)
            )
            conn.execute(
                "UPDATE jobs SET state='queued', attempts=max(attempts-1, 0), next_at=?, "
                "wait=CASE WHEN ? > ? THEN 'throttle' END, token=NULL, updated_at=? "
                "WHERE token=? AND state='dialing'",
                (next_at, next_at, now, now, token),
            )

    def mark_unknown(self, token: str, message: str, next_at: float, now: float) -> None:
        """The create may or may not have placed a call: keep the slot, reconcile later."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET result='unknown', error_message=? WHERE token=?", (message, token)
            )
            conn.execute(
                "UPDATE jobs SET next_at=?, updated_at=? WHERE token=? AND state='dialing'",
                (next_at, now, token),
            )

    # -- reconciliation -----------------------------------------------------------------------

    def known_sids(self, to: str) -> set[str]:
        rows = self.read(
            "SELECT call_sid FROM calls WHERE to_number=? AND call_sid IS NOT NULL", (to,)
        )
        return {r[0] for r in rows}

    def checked(self, token: str, next_at: float, now: float) -> int:
        """Count a reconciliation check that found nothing; returns the number of checks."""
        with self.transaction() as conn:
            conn.execute("UPDATE calls SET checks=checks+1 WHERE token=?", (token,))
            conn.execute(
                "UPDATE jobs SET next_at=?, updated_at=? WHERE token=?", (next_at, now, token)
            )
            row = conn.execute("SELECT checks FROM calls WHERE token=?", (token,)).fetchone()
        return int(row[0])

    def adopt(self, token: str, info: CallInfo, now: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET result='adopted', call_sid=?, twilio_status=? WHERE token=?",
                (info.sid, info.status, token),
            )
            conn.execute(
                "UPDATE jobs SET state='calling', call_sid=?, twilio_status=?, status_at=?, "
                "next_at=NULL, updated_at=? WHERE token=? AND state='dialing'",
                (info.sid, info.status, now, now, token),
            )

    def hold_for_review(self, claim_token: str, candidates: list[CallInfo], now: float) -> None:
        """Several calls may be ours: never redial, keep the slot until all of them end."""
        with self.transaction() as conn:
            job = conn.execute(
                "SELECT job_id, run_id, to_number, from_number FROM calls WHERE token=?",
                (claim_token,),
            ).fetchone()
            conn.execute("UPDATE calls SET result='ambiguous' WHERE token=?", (claim_token,))
            for info in candidates:
                conn.execute(
                    "INSERT INTO calls (token, job_id, run_id, to_number, from_number, claimed_at, "
                    "result, call_sid, twilio_status) VALUES (?,?,?,?,?,?, 'candidate', ?, ?)",
                    (uuid.uuid4().hex, *job, now, info.sid, info.status),
                )
            conn.execute(
                "UPDATE jobs SET state='reviewing', next_at=NULL, error_message=?, updated_at=? "
                "WHERE token=?",
                (f"{len(candidates)} possible calls found after a lost response", now, claim_token),
            )
            self._settle_review(conn, job["job_id"], now)  # every candidate may have ended

    # -- polling ------------------------------------------------------------------------------

    def live_calls(self, run_id: int) -> list[LiveCall]:
        """Everything of this run that holds a slot, with the call to ask Twilio about."""
        rows = self.read(
            f"SELECT j.id AS job_id, c.token, j.state AS job_state, c.result, c.call_sid AS sid, "
            f"c.to_number AS 'to', c.from_number, c.twilio_status, c.claimed_at, c.checks, "
            f"j.name, j.next_at, j.attempts, j.status_at, c.voicemail FROM jobs j JOIN calls c "
            f"ON ((j.state != 'reviewing' AND c.token = j.token) "
            f"OR (j.state = 'reviewing' AND c.job_id = j.id AND c.result = 'candidate')) "
            f"WHERE j.run_id=? AND j.state IN {LIVE} ORDER BY c.id",
            (run_id,),
        )
        return [LiveCall(**dict(r)) for r in rows]

    def update_status(self, call: LiveCall, info: CallInfo, now: float) -> None:
        """A non-terminal status seen while polling (written only when it changed)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET twilio_status=?, started_at=coalesce(started_at, ?) "
                "WHERE token=?",
                (info.status, info.start_time.timestamp() if info.start_time else None, call.token),
            )
            if call.job_state == JobState.CALLING:
                conn.execute(
                    "UPDATE jobs SET twilio_status=?, status_at=?, updated_at=? "
                    "WHERE id=? AND token=?",
                    (info.status, now, now, call.job_id, call.token),
                )

    def voicemail_pending(self, token: str) -> bool:
        """Commit that this call's machine message is being sent, before the update leaves;
        False if it ever was (at most one update per call, even across a kill -9)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE calls SET voicemail='pending' WHERE token=? AND voicemail IS NULL",
                (token,),
            )
        return cur.rowcount == 1

    def voicemail_result(self, token: str, result: str | None) -> None:
        """What the update did (None: certainly not processed, it may be sent again)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET voicemail=? WHERE token=? AND voicemail='pending'",
                (result, token),
            )

    def lead_fields(self, job_id: int) -> dict[str, str]:
        """A lead's columns, for its machine message's templates."""
        rows = self.read("SELECT fields FROM jobs WHERE id=?", (job_id,))
        return json.loads(rows[0][0]) if rows else {}

    def end_call(self, call: LiveCall, info: CallInfo, now: float, retry_at: float | None) -> None:
        """Twilio reports the call terminal: the lead is done, or waits for its retry."""
        outcome = _outcome(info.status)
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET twilio_status=?, started_at=?, ended_at=?, duration_s=?, "
                "answered_by=? WHERE token=?",
                (
                    info.status,
                    info.start_time.timestamp() if info.start_time else None,
                    info.end_time.timestamp() if info.end_time else now,
                    info.duration,
                    info.answered_by,
                    call.token,
                ),
            )
            if call.job_state == JobState.REVIEWING:
                self._settle_review(conn, call.job_id, now)
                return
            if retry_at is not None:
                state, next_at = JobState.QUEUED, retry_at
            else:
                done = outcome == Outcome.ANSWERED
                state, next_at = (JobState.COMPLETED if done else JobState.FAILED), None
            conn.execute(
                "UPDATE jobs SET state=?, outcome=?, twilio_status=?, status_at=?, next_at=?, "
                "token=CASE WHEN ?='queued' THEN NULL ELSE token END, "
                "wait=CASE WHEN ?='queued' THEN 'retry' END, updated_at=? "
                "WHERE id=? AND token=? AND state='calling'",
                (
                    state,
                    outcome,
                    info.status,
                    now,
                    next_at,
                    state,
                    state,
                    now,
                    call.job_id,
                    call.token,
                ),
            )

    @staticmethod
    def _settle_review(conn: sqlite3.Connection, job_id: int, now: float) -> None:
        statuses = [
            r[0]
            for r in conn.execute(
                "SELECT twilio_status FROM calls WHERE job_id=? AND result='candidate'", (job_id,)
            )
        ]
        if all(s in TWILIO_TERMINAL for s in statuses):
            answered = "completed" in statuses
            conn.execute(
                "UPDATE jobs SET state='needs_review', outcome=?, updated_at=? WHERE id=?",
                (Outcome.ANSWERED if answered else None, now, job_id),
            )

    def drop_candidate(self, call: LiveCall, message: str, now: float) -> None:
        """A review candidate Twilio does not know: it no longer holds a line."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET result='vanished', error_message=?, ended_at=? "
                "WHERE token=? AND result='candidate'",
                (message, now, call.token),
            )
            self._settle_review(conn, call.job_id, now)

    def note_call(self, token: str, message: str) -> None:
        """Why the dialer itself ended a call (shown in `calls` and the report)."""
        with self.transaction() as conn:
            conn.execute("UPDATE calls SET error_message=? WHERE token=?", (message, token))
            conn.execute(
                "UPDATE jobs SET error_message=? WHERE token=? AND state='calling'",
                (message, token),
            )

    def fail_call(self, call: LiveCall, message: str, now: float) -> None:
        """Twilio no longer knows the SID: the lead fails with that reason (never redialled)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE calls SET error_message=?, ended_at=? WHERE token=?",
                (message, now, call.token),
            )
            conn.execute(
                "UPDATE jobs SET state='failed', outcome='failed', error_message=?, updated_at=? "
                "WHERE id=? AND state IN ('calling','reviewing')",
                (message, now, call.job_id),
            )

    # -- reading for status, runs, calls ------------------------------------------------------

    def counts(self, run_id: int) -> dict[str, Any]:
        """The run's counters, derived from the job rows so they cannot drift."""
        rows = self.read(
            "SELECT state, outcome, count(*) AS n FROM jobs WHERE run_id=? GROUP BY state, outcome",
            (run_id,),
        )
        by_state: dict[str, int] = {}
        outcomes = {o.value.replace("-", "_"): 0 for o in Outcome}
        for state, outcome, n in rows:
            by_state[state] = by_state.get(state, 0) + n
            if outcome and state in (JobState.COMPLETED, JobState.FAILED):
                outcomes[outcome.replace("-", "_")] += n
        skipped = by_state.get(JobState.SKIPPED, 0)
        return {
            "queued": by_state.get(JobState.QUEUED, 0),
            "in_progress": sum(by_state.get(s, 0) for s in IN_FLIGHT),
            "dialing": by_state.get(JobState.DIALING, 0),
            "calling": by_state.get(JobState.CALLING, 0),
            "completed": by_state.get(JobState.COMPLETED, 0),
            "failed": by_state.get(JobState.FAILED, 0),
            "needs_review": by_state.get(JobState.NEEDS_REVIEW, 0)
            + by_state.get(JobState.REVIEWING, 0),
            "skipped": skipped,
            "total_leads": sum(by_state.values()) - skipped,
            "outcomes": outcomes,
        }

    def pending(self, run_id: int) -> tuple[int, bool]:
        """Calls in flight and whether any lead is queued: the loop's cheap "are we done?"."""
        row = self.read(
            f"SELECT (SELECT count(*) FROM jobs WHERE run_id=? AND state IN {LIVE}), "
            f"EXISTS (SELECT 1 FROM jobs WHERE run_id=? AND state='queued')",
            (run_id, run_id),
        )[0]
        return int(row[0]), bool(row[1])

    def skip_reasons(self, run_id: int) -> dict[str, int]:
        rows = self.read(
            "SELECT skip_reason, count(*) FROM jobs WHERE run_id=? AND state='skipped' "
            "GROUP BY skip_reason",
            (run_id,),
        )
        return {r[0]: r[1] for r in rows}

    def waiting(self, run_id: int, now: float) -> dict[str, tuple[int, float | None]]:
        """Queued leads that may not be dialled yet, by why (retry, hours, throttle), and when
        the first of each may."""
        rows = self.read(
            "SELECT coalesce(wait, 'retry'), count(*), min(next_at) FROM jobs WHERE run_id=? "
            "AND state='queued' AND next_at > ? GROUP BY 1",
            (run_id, now),
        )
        return {r[0]: (int(r[1]), r[2]) for r in rows}

    def zone_groups(self, run_id: int) -> list[str]:
        """The distinct zone groups of the leads still to dial (few: one per area, at most)."""
        rows = self.read(
            "SELECT DISTINCT tz FROM jobs WHERE run_id=? AND state='queued' AND tz IS NOT NULL",
            (run_id,),
        )
        return [r[0] for r in rows]

    def wait_for_hours(self, run_id: int, tz: str, until: float, now: float) -> None:
        """Leads of a zone group outside their window wait for it to open (shown in status)."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET next_at=?, wait='hours', updated_at=? WHERE run_id=? "
                "AND state='queued' AND tz=? AND coalesce(next_at, 0) < ?",
                (until, now, run_id, tz, until),
            )

    def next_due(self, run_id: int, closed_zones: Collection[str] = ()) -> float | None:
        """When the next lead may be dialled, leaving out the zone groups outside their hours
        now (the caller knows when those open)."""
        closed = list(closed_zones)
        hours = f"AND coalesce(tz, '') NOT IN ({','.join('?' * len(closed))})" if closed else ""
        row = self.read(
            f"SELECT min(next_at) FROM jobs WHERE run_id=? "  # NOT NULL: jobs_run_wait is partial
            f"AND state IN ('queued','dialing') AND next_at IS NOT NULL {hours}",
            (run_id, *closed),
        )[0]
        return row[0]

    def calls_page(
        self, run_id: int | None, page: int, size: int
    ) -> tuple[list[dict[str, Any]], int]:
        where, params = ("WHERE c.run_id=?", [run_id]) if run_id is not None else ("", [])
        total = self.read(f"SELECT count(*) FROM calls c {where}", params)[0][0]
        rows = self.read(
            f"SELECT c.call_sid, c.run_id, j.name AS lead_name, c.to_number AS 'to', "
            f"c.twilio_status, c.result, c.claimed_at, c.started_at, c.ended_at, c.duration_s, "
            f"c.error_code, c.error_message FROM calls c JOIN jobs j ON j.id = c.job_id {where} "
            f"ORDER BY c.id DESC LIMIT ? OFFSET ?",
            [*params, size, (page - 1) * size],
        )
        return [dict(r) for r in rows], int(total)

    # -- prices (prices.py) ---------------------------------------------------------------------

    def unpriced(self, run_id: int, ended_since: float) -> list[sqlite3.Row]:
        """Answered calls of the run that ended since then and still have no price (the only
        calls Twilio charges: one that never connected costs nothing). Oldest first."""
        return self.read(
            "SELECT call_sid, claimed_at, ended_at FROM calls WHERE run_id=? "
            "AND twilio_status='completed' AND price IS NULL AND ended_at >= ? "
            "AND call_sid IS NOT NULL ORDER BY ended_at",
            (run_id, ended_since),
        )

    def set_prices(self, prices: Iterable[tuple[str, str, str | None]]) -> int:
        """Record Twilio's (sid, price, price_unit); a price once known is never rewritten."""
        with self.transaction() as conn:
            cur = conn.executemany(
                "UPDATE calls SET price=?, price_unit=? WHERE call_sid=? AND price IS NULL",
                ((price, unit, sid) for sid, price, unit in prices),
            )
        return cur.rowcount

    def dnc_add(self, numbers: Iterable[str], source: str, now: float) -> int:
        with self.transaction() as conn:
            cur = conn.executemany(
                "INSERT OR IGNORE INTO dnc (e164, added_at, source) VALUES (?,?,?)",
                ((n, now, source) for n in numbers),
            )
        return cur.rowcount

    def dnc_remove(self, numbers: Iterable[str]) -> int:
        with self.transaction() as conn:
            cur = conn.executemany("DELETE FROM dnc WHERE e164=?", ((n,) for n in numbers))
        return cur.rowcount

    def dnc_list(self) -> list[dict[str, Any]]:
        return list(self.db["dnc"].rows_where(order_by="e164"))

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over this connection, for the schema and the cold paths where it reads
        better (rows as dicts). The claim and the loop's queries stay plain SQL: they are the
        hot path, and importing sqlite-utils costs start-up 0.14 s that `status` must not pay."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def answered_in_campaign(self, campaign: str, since: float | None) -> set[str]:
        """Numbers whose call was answered in a run of this campaign (since a time, or ever)."""
        rows = self.read(
            "SELECT j.e164 FROM runs r JOIN jobs j ON j.run_id = r.id AND j.state = 'completed' "
            "WHERE r.campaign = ? AND j.updated_at >= ?",
            (campaign, since if since is not None else float("-inf")),
        )
        return {r[0] for r in rows}

    def dnc_numbers(self) -> set[str]:
        """The whole list, for an import (one query, not one per lead)."""
        return {r[0] for r in self.read("SELECT e164 FROM dnc")}

    # -- the write-back outbox (dialer_cli/writeback.py) --------------------------------------

    def writeback_due(self, run_id: int, now: float | None, limit: int) -> list[int]:
        """Jobs whose outcome waits to be written, oldest first; `now=None`: also those
        backing off (the flush on exit tries everything once)."""
        rows = self.read(
            "SELECT job_id FROM writeback WHERE run_id=? AND state='pending' AND next_at<=? "
            "ORDER BY next_at, job_id LIMIT ?",
            (run_id, float("inf") if now is None else now, limit),
        )
        return [r[0] for r in rows]

    def writeback_written(self, job_ids: Collection[int], now: float) -> None:
        """Called only after the source database committed these rows."""
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE writeback SET state='written', error=NULL, tries=tries+1, tried_at=?, "
                "written_at=? WHERE job_id=?",
                ((now, now, job_id) for job_id in job_ids),
            )

    def writeback_refused(self, job_id: int, error: str, now: float) -> None:
        """The source refused this row (a constraint): recorded, never retried by itself."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE writeback SET state='failed', error=?, tries=tries+1, tried_at=? "
                "WHERE job_id=?",
                (error, now, job_id),
            )

    def writeback_later(
        self, job_ids: Collection[int], error: str, delay: Callable[[int], float], now: float
    ) -> None:
        """The source could not be reached: try again after `delay(tries)` seconds."""
        with self.transaction() as conn:
            for job_id in job_ids:
                row = conn.execute("SELECT tries FROM writeback WHERE job_id=?", (job_id,))
                tries = int(row.fetchone()[0]) + 1
                conn.execute(
                    "UPDATE writeback SET tries=?, error=?, tried_at=?, next_at=? WHERE job_id=?",
                    (tries, error, now, now + delay(tries), job_id),
                )

    def writeback_retry_failed(self, run_id: int) -> int:
        """Refused rows become pending again (`dialer writeback --retry-failed`)."""
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE writeback SET state='pending', next_at=0 WHERE run_id=? AND state='failed'",
                (run_id,),
            )
        return cur.rowcount

    def writeback_counts(self, run_id: int) -> dict[str, Any]:
        """`status --json`'s `writeback` object: rows by state and the latest error of a row
        not yet written (null once everything went through)."""
        counts = {"pending": 0, "written": 0, "failed": 0}
        for state, n in self.read(
            "SELECT state, count(*) FROM writeback WHERE run_id=? GROUP BY state", (run_id,)
        ):
            counts[state] = n
        last = self.read(  # a written row has no error: this is the latest of the others
            "SELECT error FROM writeback WHERE run_id=? AND error IS NOT NULL "
            "ORDER BY tried_at DESC LIMIT 1",
            (run_id,),
        )
        return {**counts, "last_error": last[0][0] if last else None}


def _outcome(status: str) -> str:
    return OUTCOME_OF_STATUS.get(status, Outcome.FAILED).value
