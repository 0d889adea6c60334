"""Where a 1,000,000-lead import spends its time: each stage alone, in this process.

    python bench/import_profile.py [--rows R]

`dialer start` imports with two threads: the importing thread parses, normalises and encodes
each chunk of leads as JSON (Python: it holds the GIL), and a writer thread inserts the previous
chunk (SQLite: the GIL is released for the whole statement). The import's speed is that of the
slower of the two, plus what they cost each other (two busy cores, handing the GIL over).

The importing thread's stages are timed cumulatively, each run to the end of the file (best of
two). The writer's work is timed alone on the chunks encoded, each part right after a run on the
bare table (about 3 minutes in all): the insert into a table with the jobs schema and nothing
else, then each index and trigger of the schema on its own (and two it
no longer has), then the whole schema with synchronous=NORMAL (the import's) and OFF (no fsync).
Run it from the repository root; the lead file is generated as `bench/import_csv.py` does.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import header, note, scratch  # noqa: E402
from import_csv import generate  # noqa: E402

from dialer_cli import leads  # noqa: E402
from dialer_cli.store import _INSERT_CHUNK, Store  # noqa: E402

EXTRAS = {  # the schema's parts that an insert pays for, and two it no longer has
    "index jobs_run_state": "CREATE INDEX x ON jobs(run_id, state, outcome)",
    "index jobs_queue": "CREATE INDEX x ON jobs(run_id, id) WHERE state = 'queued'",
    "index jobs_skipped": "CREATE INDEX x ON jobs(run_id, skip_reason) WHERE state = 'skipped'",
    "index jobs_live_number": (
        "CREATE UNIQUE INDEX x ON jobs(e164) WHERE state IN ('dialing','calling','reviewing')"
    ),
    "index jobs_token": "CREATE INDEX x ON jobs(token) WHERE token IS NOT NULL",
    "index jobs_run_wait": (
        "CREATE INDEX x ON jobs(run_id, state, next_at, wait) WHERE next_at IS NOT NULL"
    ),
    "(before) jobs_run_wait, every lead": "CREATE INDEX x ON jobs(run_id, state, next_at, wait)",
    "(before) insert trigger for write-back": (
        "CREATE TRIGGER x AFTER INSERT ON jobs WHEN NEW.state IN "
        "('completed','failed','skipped','needs_review') BEGIN INSERT OR IGNORE INTO "
        "writeback (job_id, run_id) SELECT NEW.id, NEW.run_id FROM runs WHERE id = NEW.run_id "
        "AND json_extract(settings, '$.writeback') IS NOT NULL; END"
    ),
}


def best_of_two(run: Callable[[], Iterable[object]]) -> float:
    best = float("inf")
    for _ in range(2):
        began = time.perf_counter()
        for _ in run():
            pass
        best = min(best, time.perf_counter() - began)
    return best


def encoded(source: leads.LeadSource) -> Iterable[str]:
    rows = Store._job_rows(source, None, None)
    while batch := list(islice(rows, 1000)):
        yield json.dumps(batch, ensure_ascii=False, check_circular=False)


def importing_thread(csv_path: Path) -> list[str]:
    source = leads.read_csv(csv_path)
    stages = [
        ("CSV parsed (csv module)", lambda: _csv_rows(csv_path)),
        ("+ rows as dicts, checked", source.records),
        ("+ numbers normalised, duplicates found", lambda: iter(source)),
        ("+ rows for the jobs table", lambda: Store._job_rows(source, None, None)),
        ("+ JSON of each chunk (lead fields included)", lambda: encoded(source)),
    ]
    before = 0.0
    for name, run in stages:
        took = best_of_two(run)
        note(f"{name:46} {took:5.2f} s  (+{took - before:.2f})")
        before = took
    return list(encoded(source))


def _csv_rows(path: Path) -> Iterable[object]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        yield from csv.reader(f)


def writer(tmp: Path, chunks: list[str]) -> None:
    jobs = _jobs_table(tmp)
    _insert(tmp, jobs, chunks[:100], [])  # a warm-up: the disk and the page cache

    def against_bare(extras: list[str], sync: str = "NORMAL") -> tuple[float, float]:
        """(bare, with extras), run one right after the other: this machine's speed drifts
        more between minutes than the smaller parts cost."""
        return _insert(tmp, jobs, chunks, []), _insert(tmp, jobs, chunks, extras, sync)

    schema = [ddl for name, ddl in EXTRAS.items() if not name.startswith("(before)")]
    bare, whole = against_bare(schema)
    note(f"{'rows into the bare jobs table (JSON decoded)':46} {bare:5.2f} s")
    for name, ddl in EXTRAS.items():
        without, with_it = against_bare([ddl])
        note(f"{'+ ' + name:46} {with_it - without:+5.2f} s")
    note(f"{'the whole schema, synchronous=NORMAL':46} {whole:5.2f} s")
    normal, off = against_bare(schema, "OFF")
    note(f"{'the whole schema, synchronous=OFF (no fsync)':46} {off:5.2f} s")


def _jobs_table(tmp: Path) -> str:
    store = Store.open(tmp / "schema.db")
    sql = store.conn.execute("SELECT sql FROM sqlite_master WHERE name='jobs'").fetchone()[0]
    store.close()
    return sql.replace("IF NOT EXISTS ", "")


def _insert(tmp: Path, jobs: str, chunks: list[str], extras: list[str], sync="NORMAL") -> float:
    path = tmp / "writer.db"
    for old in tmp.glob("writer.db*"):
        old.unlink()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, settings TEXT)")
    conn.execute("CREATE TABLE writeback (job_id INTEGER PRIMARY KEY, run_id INTEGER)")
    conn.execute("INSERT INTO runs VALUES (1, '{}')")
    conn.execute(jobs)
    for number, ddl in enumerate(extras):
        conn.execute(ddl.replace(" x ", f" x{number} "))
    began = time.perf_counter()
    for chunk in chunks:
        conn.execute(_INSERT_CHUNK, (1, 0.0, chunk))
    took = time.perf_counter() - began
    conn.close()
    return took


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/import_profile.py", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    header("where an import's time goes (bench/import_profile.py)")
    with scratch("dialer-bench-profile-") as tmp:
        csv_path = tmp / "leads.csv"
        generate(csv_path, args.rows)
        note(f"{args.rows:,} rows; the importing thread (Python, holds the GIL):")
        chunks = importing_thread(csv_path)
        note("the writer thread (SQLite, GIL released), each part alone:")
        writer(tmp, chunks)


if __name__ == "__main__":
    main()
