"""Outcomes written back to the lead source, so tomorrow's query knows who answered tonight.

A database source (or a campaign) may carry a `writeback` statement with named parameters: every
column of the lead under its own name, plus PARAMETERS. It runs once for each lead that reaches
a final state (answered, failed, skipped, needs review). Three promises, and how they are kept:

- Never lost. The lead's final state and a row of the `writeback` outbox are written by the same
  SQLite transaction (a trigger on `jobs`; the import's chunk for a lead skipped at import,
  store.py), whichever path finalised the lead. A row is
  marked written only after the source database committed it, so a crash in between writes it
  again: the statement should be idempotent (an UPDATE keyed on the lead).
- Never in the way. A thread of its own, with its own SQLite and source connections, writes the
  outbox in batches (every EVERY seconds, at once when BATCH rows are due); the dialing loop never
  waits for it. A source that cannot be reached only makes rows wait, retried with back-off; on
  exit, what is pending is tried once more within a bounded time and the rest stays for
  `dialer writeback RUN_ID`.
- Never silently wrong. A statement that can never work (a syntax error, a missing table or
  column, a parameter nobody provides) is refused by `check` before anything is dialled, using
  the database's own EXPLAIN. A row the source refuses (a constraint) is recorded with its error,
  and the rest of its batch is written row by row.

The parameters are the report's row for the lead (report.py), so the CRM is told exactly what
`dialer report` says.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dialer_cli import lease, report
from dialer_cli.errors import BusyError, InputError, StoreError
from dialer_cli.runner import iso
from dialer_cli.sources import DatabaseUrl, driver_message, is_database_url, open_engine
from dialer_cli.store import Store

PARAMETERS = (
    "outcome",
    "attempts",
    "call_sid",
    "answered_by",
    "talk_s",
    "ended_at",
    "error_code",
    "price",
    "run_id",
)
BATCH = 100  # rows per source transaction
EVERY = 1.0  # seconds between batches while fewer than BATCH rows are due
FLUSH_TIMEOUT = 10.0  # seconds the exit waits for pending rows; the rest stays in the outbox
MAX_BACKOFF = 60.0  # seconds between tries of a source that cannot be reached, at most
TICK = 0.2  # how often the writer thread looks at the outbox
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")  # a :name parameter, as SQLAlchemy's text() sees it
# MySQL/MariaDB server errors worth retrying (too many connections, shutdown, lock wait timeout,
# deadlock, connection killed, idle timeout); 2000-2999 are client errors: all transport.
_MYSQL_TRANSIENT = frozenset({1040, 1053, 1205, 1213, 1927, 4031})
_SQLITE_TRANSIENT = frozenset({5, 6, 10, 13, 14})  # busy, locked, I/O error, full, cannot open


class Refused(Exception):
    """The source answered and refused the statement for these values; nothing was committed."""


class Unreachable(Exception):
    """The source did not answer (down, connection lost, locked); nothing was committed."""


def lock_name(run_id: int) -> str:
    """One writer per run: the driver's thread or `dialer writeback`, never both at once."""
    return f"writeback-{run_id}"


# -- what a run keeps, and the check before dialling ---------------------------------------------


def spec(source: str, sql: str) -> dict[str, str]:
    """The run's `writeback` setting: where to write, and what. The URL is kept as given (with
    its password, like the config file holding it) so a resume days later can still write."""
    return {"url": source, "sql": sql.strip().rstrip(";").rstrip()}


def parameters(sql: str) -> list[str]:
    """The :name parameters of a statement, in order of first use."""
    return list(dict.fromkeys(_BIND.findall(sql)))


def check(source: str, sql: str, columns: Sequence[str]) -> None:
    """Refuse, before anything is written or dialled, a statement that can never work: one on a
    CSV source, a parameter that is neither a lead column nor ours, a syntax error, a missing
    table or column (the database's EXPLAIN says, without changing anything)."""
    if not is_database_url(source):
        raise InputError(
            f"{source}: writeback needs a database source; for a CSV file, "
            "`dialer report RUN_ID` is the write-back"
        )
    if not sql.strip():
        raise InputError("writeback: the statement is empty")
    url = DatabaseUrl.parse(source)
    known = {*columns, *PARAMETERS, *(f"lead_{p}" for p in PARAMETERS if p in columns)}
    unknown = [name for name in parameters(sql) if name not in known]
    if unknown:
        ours = ", ".join(f":{p}" for p in PARAMETERS)
        raise InputError(
            f"writeback: unknown parameter :{unknown[0]}; use a column of the leads "
            f"({', '.join(columns)}) or one of {ours}"
        )
    sink = open_sink(url, spec(source, sql)["sql"])
    try:
        sink.explain(dict.fromkeys(parameters(sql)))
    except Refused as exc:
        raise InputError(f"writeback: the statement cannot work on {url.masked}: {exc}") from None
    except Unreachable as exc:
        raise InputError(f"writeback: cannot check the statement on {url.masked}: {exc}") from None
    finally:
        sink.close()


# -- the source, written to ---------------------------------------------------------------------


class Sink:
    """One connection of its own to the source, kept between batches, dropped on failure."""

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run the statement for every row in one transaction, committed; or raise."""
        raise NotImplementedError

    def explain(self, params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def open_sink(url: DatabaseUrl, sql: str) -> Sink:
    return SqliteSink(url, sql) if url.driver == "sqlite" else ServerSink(url, sql)


class SqliteSink(Sink):
    """The standard library's sqlite3: the file must exist (a typo never creates a database)."""

    def __init__(self, url: DatabaseUrl, sql: str):
        self.url, self.sql = url, sql
        self.conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self.conn is None:
            path = self.url.sqlite_path()
            if not path.is_file():
                raise Unreachable(f"{path}: file not found")
            try:
                self.conn = sqlite3.connect(
                    f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=5, isolation_level=None
                )
            except sqlite3.Error as exc:
                raise Unreachable(self.url.scrub(driver_message(exc))) from None
        return self.conn

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(self.sql, rows)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise self._sorted(exc) from None

    def explain(self, params: Mapping[str, Any]) -> None:
        try:
            self._connect().execute(f"EXPLAIN {self.sql}", params).fetchall()
        except sqlite3.Error as exc:
            raise self._sorted(exc) from None

    def _sorted(self, exc: sqlite3.Error) -> Exception:
        message = self.url.scrub(driver_message(exc))
        if (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_TRANSIENT:
            return Unreachable(message)
        return Refused(message)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class ServerSink(Sink):
    """PostgreSQL or MySQL/MariaDB through SQLAlchemy; `:name` parameters as in text()."""

    def __init__(self, url: DatabaseUrl, sql: str):
        self.url = url
        self.sa, self.engine = open_engine(url, url.masked)
        self.statement = self.sa.text(sql)
        self.explained = self.sa.text(f"EXPLAIN {sql}")
        self.conn: Any = None

    def _connect(self) -> Any:
        if self.conn is None:
            try:
                self.conn = self.engine.connect()
            except Exception as exc:  # noqa: BLE001 - any failure to connect means "not now"
                raise Unreachable(self.url.scrub(driver_message(exc))) from None
        return self.conn

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._run(self.statement, list(rows), commit=True)

    def explain(self, params: Mapping[str, Any]) -> None:
        self._run(self.explained, dict(params), commit=False)

    def _run(self, statement: Any, params: Any, commit: bool) -> None:
        conn = self._connect()
        try:
            with conn.begin() as transaction:
                conn.execute(statement, params)
                if not commit:
                    transaction.rollback()
        except self.sa.exc.DBAPIError as exc:
            raise self._sorted(exc) from None
        except self.sa.exc.StatementError as exc:  # a value SQLAlchemy itself cannot bind
            raise Refused(self.url.scrub(driver_message(exc))) from None
        except Exception as exc:  # noqa: BLE001 - a socket error outside the driver's wrapping
            self.close()
            raise Unreachable(self.url.scrub(driver_message(exc))) from None

    def _sorted(self, exc: Any) -> Exception:
        """Transport or transient (retry later) versus the statement refused (record it)."""
        message = self.url.scrub(driver_message(exc))
        args = getattr(exc.orig, "args", ())
        code = args[0] if args and isinstance(args[0], int) else None  # MySQL's error number
        if code is not None:
            transient = 2000 <= code < 3000 or code in _MYSQL_TRANSIENT
        else:
            transient = isinstance(exc, self.sa.exc.OperationalError | self.sa.exc.InterfaceError)
        if transient or exc.connection_invalidated:
            self.close()
            return Unreachable(message)
        return Refused(message)

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001, S110 - the connection is gone either way
                pass
            self.conn = None


# -- the rows ------------------------------------------------------------------------------------


Params = dict[str, Any]


def rows_for(
    store: Store, run_id: int, job_ids: Sequence[int], now: float
) -> list[tuple[int, Params]]:
    """(job id, parameters) for each job: the lead's columns under their own names, then ours.

    A lead column named like one of ours is also given as `lead_<name>`; ours wins the plain name.
    """
    marks = ",".join("?" * len(job_ids))
    jobs = store.read(f"SELECT * FROM jobs WHERE id IN ({marks}) ORDER BY id", job_ids)
    calls: dict[int, list[sqlite3.Row]] = {}
    for call in store.read(
        f"SELECT * FROM calls WHERE job_id IN ({marks}) ORDER BY job_id, id", job_ids
    ):
        calls.setdefault(call["job_id"], []).append(call)
    out = []
    for job in jobs:
        own = calls.get(job["id"], [])
        row = report._report_row(job, own, now)  # the report's row: the CRM learns what it says
        fields: dict[str, Any] = json.loads(job["fields"])
        ended = [c["ended_at"] for c in own if c["ended_at"] is not None]
        ours = {
            "outcome": row["outcome"],
            "attempts": row["attempts"],
            "call_sid": row["call_sid"] or None,
            "answered_by": row["answered_by"],
            "talk_s": row["talk_s"],
            "ended_at": iso(ended[-1]) if ended else None,
            "error_code": row["error_code"],
            "price": row.get("price", _price(own)),
            "run_id": run_id,
        }
        clashing = {f"lead_{k}": fields[k] for k in PARAMETERS if k in fields}
        out.append((int(job["id"]), {**fields, **clashing, **ours}))
    return out


def _price(calls: list[sqlite3.Row]) -> Any:
    """The last placed call's price, where the database records prices (issue 12, part 2)."""
    placed = [c for c in calls if c["call_sid"]]
    if not placed or "price" not in placed[-1].keys():
        return None
    return placed[-1]["price"]


# -- writing -------------------------------------------------------------------------------------


class Writer:
    """Writes one run's outbox to its source: `write_pending` once (`dialer writeback`), or
    `start` a thread that keeps writing until `close` (the driver)."""

    def __init__(
        self,
        db_path: str | Path,
        run_id: int,
        setting: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        every: float = EVERY,
    ):
        self.db_path, self.run_id = str(db_path), run_id
        self.url = DatabaseUrl.parse(setting["url"])
        self.sql = setting["sql"]
        self.clock, self.rng, self.every = clock, rng or random.Random(), every
        self.sink = open_sink(self.url, self.sql)  # here: a missing driver is one line, at once
        self.problem: str | None = None  # why the thread ended early, if it did
        self._stop = threading.Event()
        self._flush_until: float | None = None
        self._thread: threading.Thread | None = None

    def delay(self, tries: int) -> float:
        """Back-off before the next try of a row: 1, 2, 4 … s up to MAX_BACKOFF, with jitter."""
        return min(MAX_BACKOFF, 2.0 ** (tries - 1)) * self.rng.uniform(0.5, 1.0)

    def write_pending(
        self, store: Store, sink: Sink, *, waiting_too: bool, until: float | None = None
    ) -> bool:
        """Write every due row (`waiting_too`: also rows backing off), BATCH at a time, until
        none is left (True) or the source cannot be reached or time is up (False)."""
        while until is None or self.clock() < until:
            if until is None and self._stop.is_set():
                return False  # `close` was asked: the bounded flush takes over
            due = store.writeback_due(self.run_id, None if waiting_too else self.clock(), BATCH)
            if not due:
                return True
            if not self._batch(store, sink, due):
                return False
        return False

    def _batch(self, store: Store, sink: Sink, job_ids: list[int]) -> bool:
        rows = rows_for(store, self.run_id, job_ids, self.clock())
        for gone in set(job_ids) - {j for j, _ in rows}:  # never: delete_run empties the outbox
            store.writeback_refused(gone, "the lead is no longer in the database", self.clock())
        try:
            sink.write([params for _, params in rows])
        except Refused:
            return self._one_by_one(store, sink, rows)
        except Unreachable as exc:
            store.writeback_later([j for j, _ in rows], str(exc), self.delay, self.clock())
            return False
        store.writeback_written([j for j, _ in rows], self.clock())
        return True

    def _one_by_one(self, store: Store, sink: Sink, rows: list[tuple[int, Params]]) -> bool:
        """A batch with a row the source refuses: each row in its own transaction, so the
        refused ones are recorded with their error and the others are written."""
        for n, (job_id, params) in enumerate(rows):
            try:
                sink.write([params])
            except Refused as exc:
                store.writeback_refused(job_id, str(exc), self.clock())
                continue
            except Unreachable as exc:
                rest = [j for j, _ in rows[n:]]
                store.writeback_later(rest, str(exc), self.delay, self.clock())
                return False
            store.writeback_written([job_id], self.clock())
        return True

    # -- the driver's thread -----------------------------------------------------------------

    def start(self) -> Writer:
        self._thread = threading.Thread(
            target=self._loop, name=f"writeback-{self.run_id}", daemon=True
        )
        self._thread.start()
        return self

    def close(self, flush_timeout: float | None = None) -> None:
        """Stop the thread after one last try of everything pending, within `flush_timeout`
        seconds; a source that hangs is left behind (the rows stay in the outbox)."""
        if self._thread is None:
            return
        flush_timeout = FLUSH_TIMEOUT if flush_timeout is None else flush_timeout
        self._flush_until = self.clock() + flush_timeout
        self._stop.set()
        self._thread.join(flush_timeout + 1.0)

    def _loop(self) -> None:
        try:
            store = Store.open(self.db_path)  # a connection of its own, in its own thread
        except StoreError as exc:
            self.problem = str(exc)
            return
        sink = self.sink
        lock = lease.NamedLock(self.db_path, lock_name(self.run_id))
        held, last = False, float("-inf")
        try:
            while not self._stop.wait(TICK):
                try:
                    held = held or _try_lock(lock)
                    now = self.clock()
                    due = len(store.writeback_due(self.run_id, now, BATCH)) if held else 0
                    if due >= BATCH or (due and now - last >= self.every):
                        last = now
                        self.write_pending(store, sink, waiting_too=False)
                except StoreError:
                    continue  # the run's database is busy: the rows wait in it
            if held or _try_lock(lock):
                self.write_pending(store, sink, waiting_too=True, until=self._flush_until)
        except Exception as exc:  # noqa: BLE001 - never a traceback from a thread; rows wait
            self.problem = str(exc)  # rows not marked written stay pending: `dialer writeback`
        finally:
            lock.release()
            sink.close()
            store.close()


def _try_lock(lock: lease.NamedLock) -> bool:
    try:
        lock.acquire("busy")
    except BusyError:
        return False
    return True
