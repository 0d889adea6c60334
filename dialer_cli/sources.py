"""Lead sources in a database: a query or a table behind a URL, seen as the same `LeadSource`.

A database source is checked eagerly like a CSV file (connect, run the query, phone column, at least
one row) so a bad source fails before the dialer writes anything; then the query is run again and
streamed (a server-side cursor) each time the source is iterated, so a million rows cost no more
memory than ten. Rows go through `leads.to_leads`, so numbers are normalised, skipped and
de-duplicated exactly as for CSV.

SQLite uses the standard library. PostgreSQL and MySQL/MariaDB go through SQLAlchemy, imported only
when such a URL is opened, so the core install (and `import dialer_cli.sources`) does not need it.
Every message names the source with its password masked, and the password is scrubbed from driver
messages too: a URL is often pasted with credentials in it and error lines end up in cron mail.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from phonenumbers import SUPPORTED_REGIONS

from dialer_cli.errors import LeadsError
from dialer_cli.leads import LeadSource, Record, find_phone_column, read_csv, unique_columns

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+)://")  # two letters at least: C:// is a drive
# What each accepted scheme means: plain names pick the driver we ship an extra for.
DRIVERS = {
    "sqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
    "mariadb+pymysql": "mariadb+pymysql",
}
EXTRAS = {"postgresql+psycopg": "postgres", "mysql+pymysql": "mysql", "mariadb+pymysql": "mysql"}
BATCH = 1000  # rows per round trip of the server-side cursor
CONNECT_TIMEOUT = 10  # seconds; an unreachable host must not hang `dialer start` for minutes
_MASK = "***"


def is_database_url(source: str) -> bool:
    """Anything shaped `scheme://...` is meant as a database, so an unknown scheme gets a clear
    "unsupported scheme" rather than "file not found"."""
    return _URL.match(source) is not None


def open_source(
    source: str,
    *,
    query: str | None = None,
    table: str | None = None,
    phone_column: str = "phone",
    default_region: str = "US",
) -> LeadSource:
    """Open a CSV path or a database URL as a checked `LeadSource` (the one entry point for SOURCE).

    For a database, exactly one of `query` / `table` is required; the query runs once here to
    check it, and again (streamed) every time the source is iterated.
    """
    if not is_database_url(source):
        if query is not None or table is not None:
            raise LeadsError(
                f"{source}: --query and --table apply to a database URL, not to a CSV file"
            )
        return read_csv(Path(source), phone_column=phone_column, default_region=default_region)
    url = DatabaseUrl.parse(source)
    what = _Selection.of(url, query, table)
    region = _region(url, default_region)
    rows = _Rows(url, what)
    columns, first = rows.peek()
    phone = find_phone_column(columns, phone_column, what.describe(url))
    if first is None:
        raise LeadsError(f"{what.describe(url)}: no leads: {what.empty()}")
    return LeadSource(
        name=what.describe(url),
        key=what.key(url),
        columns=columns,
        phone_column=phone,
        records=rows,
        default_region=region,
    )


def count_rows(source: LeadSource) -> int:
    """How many rows the source has: COUNT(*) on the server for a database, a streamed count
    of records for CSV (blank lines excluded, duplicates and bad numbers included)."""
    if isinstance(source.records, _Rows):
        return source.records.count()
    return sum(1 for _ in source.records())


# -- URLs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL that can show itself without its password."""

    raw: str
    driver: str  # a value of DRIVERS
    secrets: tuple[str, ...]  # the password as written and decoded, scrubbed from every message

    @classmethod
    def parse(cls, raw: str) -> DatabaseUrl:
        scheme = raw.split("://", 1)[0].lower()
        secrets = _secrets(raw)
        if scheme not in DRIVERS:
            known = "sqlite:///path.db, postgresql://user@host/db or mysql+pymysql://user@host/db"
            masked = _scrub(_masked(raw), secrets)
            raise LeadsError(f"{masked}: unsupported database URL scheme {scheme!r}; use {known}")
        return cls(raw, DRIVERS[scheme], secrets)

    @property
    def masked(self) -> str:
        """The URL as the user wrote it, password shown as ***."""
        return self.scrub(_masked(self.raw))

    @property
    def identity(self) -> str:
        """The URL without password, driver spelled out and SQLite paths made absolute: what
        makes two spellings of one database the same source."""
        parts = urlsplit(self.raw)
        if self.driver == "sqlite":
            return "sqlite:///" + str(self.sqlite_path().resolve())
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k != "password"])
        netloc = _without_password(parts.netloc)
        return urlunsplit((self.driver, netloc, parts.path, query, ""))

    def sqlite_path(self) -> Path:
        """`sqlite:///crm.db` is crm.db relative to here, `sqlite:////srv/crm.db` is absolute."""
        parts = urlsplit(self.raw)
        return Path(unquote(parts.path[1:] if parts.path.startswith("/") else parts.path))

    def scrub(self, text: str) -> str:
        return _scrub(text, self.secrets)


def _secrets(raw: str) -> tuple[str, ...]:
    try:
        parts = urlsplit(raw)
        password = parts.password
    except ValueError:
        return ()
    found = [password or ""]
    found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "password"]
    found += [unquote(s) for s in found]
    return tuple(sorted({s for s in found if s}, key=len, reverse=True))


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, _MASK)
    return text


def _masked(raw: str) -> str:
    """String surgery, not urlunsplit: that would turn sqlite:////abs into sqlite://abs."""
    scheme, sep, rest = raw.partition("://")
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, host = netloc.rpartition("@")
    if ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:{_MASK}{at}{host}"
    tail = re.sub(r"([?&])password=[^&#]*", rf"\1password={_MASK}", tail)
    return f"{scheme}{sep}{netloc}{tail}"


def _without_password(netloc: str) -> str:
    userinfo, at, host = netloc.rpartition("@")
    return f"{userinfo.partition(':')[0]}{at}{host}"


# -- what to read ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Selection:
    """The user's query, or a table read whole; the table name is only ever quoted, never pasted."""

    query: str | None
    table: str | None

    @classmethod
    def of(cls, url: DatabaseUrl, query: str | None, table: str | None) -> _Selection:
        if (query is None) == (table is None) or not (query or table or "").strip():
            raise LeadsError(
                f'{url.masked}: pass exactly one of --query "SELECT ..." or --table NAME'
            )
        if query is not None:
            return cls(query.strip().rstrip(";").rstrip(), None)
        return cls(None, (table or "").strip())

    def describe(self, url: DatabaseUrl) -> str:
        return f"{url.masked} ({'query' if self.query is not None else f'table {self.table}'})"

    def key(self, url: DatabaseUrl) -> str:
        """Same query against the same database = same source, whoever's password opened it."""
        what = ["query", self.query] if self.query is not None else ["table", self.table]
        text = json.dumps([url.identity, *what], ensure_ascii=False)
        return "db:" + hashlib.sha256(text.encode()).hexdigest()

    def empty(self) -> str:
        if self.query is not None:
            return "the query returned no rows; check its WHERE clause"
        return f"table {self.table} is empty"

    def split_table(self) -> tuple[str | None, str]:
        """`crm.leads` is table leads in schema crm."""
        schema, _, name = (self.table or "").rpartition(".")
        return schema or None, name


def _region(url: DatabaseUrl, region: str) -> str:
    if region.upper() not in SUPPORTED_REGIONS:
        raise LeadsError(
            f"{url.masked}: unknown default region {region!r}; "
            "use a two-letter country code such as US or GB"
        )
    return region.upper()


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


# -- reading --------------------------------------------------------------------------------------

Rows = Iterator[Sequence[Any]]


class _Rows:
    """The `records` callable of a database LeadSource: each call runs the query again."""

    def __init__(self, url: DatabaseUrl, what: _Selection):
        self.url, self.what = url, what
        self.name = what.describe(url)

    def __call__(self) -> Iterator[Record]:
        with self._open() as (columns, rows):
            for line, row in enumerate(rows, 1):
                yield line, dict(zip(columns, map(_text, row), strict=True))

    def peek(self) -> tuple[list[str], Sequence[Any] | None]:
        """Run the query now: its columns and first row (None when it returned nothing)."""
        with self._open() as (columns, rows):
            return columns, next(rows, None)

    def count(self) -> int:
        with self._open(count=True) as (_, rows):
            return int(next(rows)[0])

    @contextmanager
    def _open(self, count: bool = False) -> Iterator[tuple[list[str], Rows]]:
        reader = _sqlite if self.url.driver == "sqlite" else _sqlalchemy
        with reader(self.url, self.what, count, self._fail) as (columns, rows):
            yield (
                unique_columns(columns, f"{self.name}: the result", "give one an alias (AS ...)"),
                rows,
            )

    def _fail(self, stage: str, exc: BaseException) -> LeadsError:
        """One line for a driver error at `stage`: what failed, the driver's words, what to do."""
        problem, hint = _STAGES[stage]
        if stage == "query" and self.what.table is not None:
            problem, hint = f"cannot read table {self.what.table}", "check the table name"
        return LeadsError(self.url.scrub(f"{self.name}: {problem} ({driver_message(exc)}); {hint}"))


_STAGES = {
    "connect": ("cannot connect", "check the host, port, database name, user and password"),
    "query": ("the query failed", "check the SQL"),
    "read": ("reading the rows failed", "nothing was imported"),
}


def driver_message(exc: BaseException) -> str:
    """The driver's own words, first line only: SQLAlchemy's wrapper repeats the SQL and a link."""
    orig = getattr(exc, "orig", None) or exc
    args = getattr(orig, "args", ())
    text = args[1] if len(args) > 1 and isinstance(args[0], int) else str(orig)
    first = next((line for line in str(text).splitlines() if line.strip()), type(orig).__name__)
    first = re.sub(r"\s+", " ", first).strip().removeprefix("connection failed: ")
    return first if len(first) <= 300 else first[:297] + "..."


Fail = Callable[[str, BaseException], LeadsError]


@contextmanager
def _sqlite(
    url: DatabaseUrl, what: _Selection, count: bool, fail: Fail
) -> Iterator[tuple[list[str], Rows]]:
    """Read-only and never created: a typo in the path must not become an empty database."""
    path = url.sqlite_path()
    if not path.is_file():
        problem = "is a directory" if path.is_dir() else "file not found"
        raise LeadsError(
            f"{what.describe(url)}: {path}: {problem}; check the path after sqlite:///"
        )
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise fail("connect", exc) from None
    try:
        try:
            cursor = conn.execute(_sqlite_sql(what, count))
        except sqlite3.Error as exc:
            raise fail("query", exc) from None
        columns = [d[0] for d in cursor.description or ()]
        with closing(_guarded(cursor, sqlite3.Error, fail)) as rows:
            yield columns, rows
    finally:
        conn.close()


def _sqlite_sql(what: _Selection, count: bool) -> str:
    if what.query is not None:
        return f"SELECT COUNT(*) FROM ({what.query})" if count else what.query
    schema, name = what.split_table()
    quoted = ".".join(_sqlite_quote(part) for part in (schema, name) if part)
    return f"SELECT {'COUNT(*)' if count else '*'} FROM {quoted}"


def _sqlite_quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _guarded(
    rows: Rows, errors: type[BaseException] | tuple[type[BaseException], ...], fail: Fail
) -> Rows:
    """Rows, with a failure halfway (server gone, connection cut) as a LeadsError.

    Callers close it (contextlib.closing) before the connection: closing it closes the driver's
    cursor, and sqlite3 raises if that happens after the connection is gone.
    """
    try:
        yield from rows
    except errors as exc:
        raise fail("read", exc) from None


@contextmanager
def _sqlalchemy(
    url: DatabaseUrl, what: _Selection, count: bool, fail: Fail
) -> Iterator[tuple[list[str], Rows]]:
    sa, engine = open_engine(url, what.describe(url))
    try:
        try:
            conn = engine.connect()
        except Exception as exc:  # not only DBAPIError: pymysql raises RuntimeError when
            raise fail("connect", exc) from None  # MySQL 8 auth needs `cryptography`
        with conn:
            try:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")  # a lead source is only read
                streaming = conn.execution_options(stream_results=True, yield_per=BATCH)
                result = streaming.execute(_statement(sa, what, count))
            except sa.exc.DBAPIError as exc:
                raise fail("query", exc) from None
            with result, closing(_guarded(result, sa.exc.DBAPIError, fail)) as rows:
                yield list(result.keys()), rows
    finally:
        engine.dispose()


def open_engine(url: DatabaseUrl, name: str) -> tuple[Any, Any]:
    """SQLAlchemy and an engine for a server URL: no pool (each connection is closed with its
    user) and a bounded connect time. `name` is how a message names the source."""
    try:
        import sqlalchemy as sa
    except ImportError:
        raise _missing_extra(url, name) from None
    try:
        parsed = sa.engine.make_url(url.raw).set(drivername=url.driver)
        args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT}
        return sa, sa.create_engine(parsed, poolclass=sa.pool.NullPool, connect_args=args)
    except ImportError:  # the driver (psycopg, pymysql) is missing, sqlalchemy is not
        raise _missing_extra(url, name) from None
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise LeadsError(
            url.scrub(f"{url.masked}: not a valid database URL ({driver_message(exc)})")
        ) from None


def _missing_extra(url: DatabaseUrl, name: str) -> LeadsError:
    extra = EXTRAS[url.driver]
    return LeadsError(
        f"{name}: reading {extra.replace('postgres', 'PostgreSQL')} needs the "
        f"{extra} extra: pip install 'dialer-cli[{extra}]'"
    )


def _statement(sa: Any, what: _Selection, count: bool) -> Any:
    """The user's SQL goes to the server as written: colons are escaped so that text() does not
    take `:name` for a parameter, and text() escapes `%` for the driver."""
    if what.query is not None:
        sql = what.query.replace(":", "\\:")
        if count:
            sql = f"SELECT COUNT(*) FROM ({sql}) AS dialer_rows"
        return sa.text(sql)
    schema, name = what.split_table()
    source = sa.table(name, schema=schema)  # quoted by the dialect when the name needs it
    column = sa.func.count() if count else sa.literal_column("*")
    return sa.select(column).select_from(source)
