"""Database lead sources against real servers: SQLite always, PostgreSQL and MariaDB/MySQL when
they answer on 127.0.0.1 (CI and the dev box), reported as SKIPPED with the reason when not.

Each test makes uniquely named tables and drops them afterwards, so runs can share a server.
"""

from __future__ import annotations

import gc
import os
import sqlite3
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dialer_cli import sources
from dialer_cli.errors import LeadsError
from dialer_cli.leads import LeadSource

POSTGRES = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL = os.environ.get("TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
SERVERS = {"postgres": POSTGRES, "mysql": MYSQL}
SECRET = "hunter2"


# -- databases ------------------------------------------------------------------------------------


@dataclass
class Db:
    """One database to put test tables in; every table it creates is dropped at teardown."""

    kind: str
    url: str
    engine: Any = None  # SQLAlchemy engine for servers; None for SQLite (stdlib only)
    path: Path | None = None
    tables: list[str] = field(default_factory=list)

    def create(
        self, columns: Sequence[str], rows: Sequence[Sequence[object]], name: str | None = None
    ) -> str:
        """A table of text columns named exactly as given (mixed case, spaces, quotes)."""
        name = name or f"leads_{uuid.uuid4().hex[:10]}"
        self.tables.append(name)
        if self.engine is None:
            with sqlite3.connect(self.path) as conn:
                cols = ", ".join(f"{q(c)} TEXT" for c in columns)
                conn.execute(f"CREATE TABLE {q(name)} ({cols})")
                marks = ", ".join("?" * len(columns))
                conn.executemany(f"INSERT INTO {q(name)} VALUES ({marks})", rows)
            return name
        import sqlalchemy as sa

        table = sa.Table(name, sa.MetaData(), *(sa.Column(c, sa.String(255)) for c in columns))
        with self.engine.begin() as conn:
            table.create(conn)
            if rows:
                conn.execute(table.insert(), [dict(zip(columns, r, strict=True)) for r in rows])
        return name

    def execute(self, sql: str) -> None:
        if self.engine is None:
            with sqlite3.connect(self.path) as conn:
                conn.execute(sql)
            return
        with self.engine.begin() as conn:
            conn.exec_driver_sql(sql)

    def quote(self, name: str) -> str:
        if self.engine is None:
            return q(name)
        return str(self.engine.dialect.identifier_preparer.quote_identifier(name))

    def drop_all(self) -> None:
        for name in self.tables:
            self.execute(f"DROP TABLE IF EXISTS {self.quote(name)}")


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_REACHABLE: dict[str, Any] = {}


def server_engine(kind: str) -> Any:
    """Connect once per session; a server that does not answer skips its tests, with the reason."""
    if kind not in _REACHABLE:
        try:
            import sqlalchemy as sa

            url = sa.engine.make_url(SERVERS[kind])
            url = url.set(drivername=sources.DRIVERS[url.drivername])
            engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            _REACHABLE[kind] = engine
        except Exception as exc:  # noqa: BLE001 - any failure means "not here"
            _REACHABLE[kind] = f"{kind} not reachable at {SERVERS[kind]}: {exc}".splitlines()[0]
    found = _REACHABLE[kind]
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Db]:
    if request.param == "sqlite":
        path = tmp_path / "crm.db"
        sqlite3.connect(path).close()
        database = Db("sqlite", f"sqlite:///{path}", path=path)
    else:
        database = Db(request.param, SERVERS[request.param], engine=server_engine(request.param))
    yield database
    database.drop_all()


@pytest.fixture
def postgres() -> Iterator[Db]:
    database = Db("postgres", POSTGRES, engine=server_engine("postgres"))
    yield database
    database.drop_all()


@pytest.fixture
def mysql() -> Iterator[Db]:
    database = Db("mysql", MYSQL, engine=server_engine("mysql"))
    yield database
    database.drop_all()


def with_password(url: str, password: str = SECRET) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def error_of(source: str, **kwargs: Any) -> str:
    """open_source's one-line message; the password never appears in it."""
    kwargs.setdefault("phone_column", "phone")
    if "query" not in kwargs and "table" not in kwargs:
        kwargs["query"] = "SELECT 1 AS phone"
    with pytest.raises(LeadsError) as info:
        sources.open_source(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    assert info.value.exit_code == 2
    return message


PEOPLE = [("Ada", "(415) 555-0142"), ("Bob", "+12125550123"), ("Cy", "+1 415 555 0143")]


# -- reading --------------------------------------------------------------------------------------


def test_table_and_query_read_the_same_leads(db: Db) -> None:
    table = db.create(["name", "phone"], PEOPLE)
    by_table = sources.open_source(db.url, query=None, table=table, phone_column="phone")
    by_query = sources.open_source(
        db.url, query=f"SELECT name, phone FROM {db.quote(table)} ORDER BY name;", table=None
    )
    for source in (by_table, by_query):
        assert source.columns == ["name", "phone"]
        assert source.phone_column == "phone"
        assert source.key.startswith("db:")
        got = sorted((lead.name, lead.e164, lead.fields["phone"]) for lead in source)
        assert got == [
            ("Ada", "+14155550142", "(415) 555-0142"),
            ("Bob", "+12125550123", "+12125550123"),
            ("Cy", "+14155550143", "+1 415 555 0143"),
        ]
    assert by_table.name.endswith(f" (table {table})")
    assert by_query.name.endswith(" (query)")
    assert [lead.line for lead in by_query] == [1, 2, 3]  # 1-based row number in the result
    assert by_table.key != by_query.key
    assert sources.count_rows(by_table) == sources.count_rows(by_query) == 3


def test_iterating_twice_runs_the_query_twice(db: Db) -> None:
    table = db.create(["phone"], [("+12125550123",)])
    source = sources.open_source(db.url, query=None, table=table)
    assert [lead.e164 for lead in source] == ["+12125550123"]
    db.execute(f"INSERT INTO {db.quote(table)} VALUES ('+12125550124')")
    assert [lead.e164 for lead in source] == ["+12125550123", "+12125550124"]


def test_mixed_case_columns_and_phone_column_found_case_insensitively(db: Db) -> None:
    table = db.create(["Full Name", "PhoneNumber", "CITY"], [("Ada L", "4155550142", "SF")])
    source = sources.open_source(db.url, query=None, table=table, phone_column="phonenumber")
    assert source.columns == ["Full Name", "PhoneNumber", "CITY"]
    assert source.phone_column == "PhoneNumber"
    [lead] = list(source)
    assert lead.fields == {"Full Name": "Ada L", "PhoneNumber": "4155550142", "CITY": "SF"}
    assert lead.e164 == "+14155550142"
    by_query = sources.open_source(
        db.url,
        query=f"SELECT {db.quote('PhoneNumber')} AS {db.quote('Mobile')} FROM {db.quote(table)}",
        table=None,
        phone_column="MOBILE",
    )
    assert by_query.phone_column == "Mobile"


def test_mixed_case_and_odd_table_names_are_quoted(db: Db) -> None:
    table = db.create(["phone"], [("+12125550123",)], name=f'Lead "List" {uuid.uuid4().hex[:6]}')
    source = sources.open_source(db.url, query=None, table=table)
    assert [lead.e164 for lead in source] == ["+12125550123"]
    schema = {"sqlite": "main", "postgres": "public", "mysql": "test"}[db.kind]
    qualified = sources.open_source(db.url, query=None, table=f"{schema}.{table}")
    assert [lead.e164 for lead in qualified] == ["+12125550123"]


def test_a_table_name_is_never_pasted_into_sql(db: Db) -> None:
    victim = db.create(["phone"], [("+12125550123",)])
    message = error_of(db.url, query=None, table=f"{victim}; DROP TABLE {victim}")
    assert "cannot read table" in message
    assert [lead.e164 for lead in sources.open_source(db.url, query=None, table=victim)] == [
        "+12125550123"
    ]


def test_numbers_are_normalised_and_skipped_as_for_csv(db: Db) -> None:
    rows = [
        ("Ada", "(415) 555-0142"),
        ("Bob", None),
        ("Cy", "not a number"),
        ("Di", "+1 415-555-0142"),
        ("Ed", "020 7946 0958"),
    ]
    table = db.create(["name", "phone"], rows)
    source = sources.open_source(
        db.url, query=f"SELECT * FROM {db.quote(table)} ORDER BY name", table=None
    )
    got = [(lead.line, lead.name, lead.e164, lead.skip_reason) for lead in source]
    assert got == [
        (1, "Ada", "+14155550142", None),
        (2, "Bob", None, "missing-number"),
        (3, "Cy", None, "invalid-number"),
        (4, "Di", None, "duplicate"),
        (5, "Ed", None, "invalid-number"),  # a UK number is not valid for region US
    ]
    uk = sources.open_source(db.url, query=None, table=table, default_region="gb")
    assert {lead.name: lead.e164 for lead in uk}["Ed"] == "+442079460958"


def test_nulls_and_non_text_values_become_text(db: Db) -> None:
    source = sources.open_source(
        db.url, query="SELECT 4155550142 AS phone, NULL AS note, 7 AS n", table=None
    )
    [lead] = list(source)
    assert lead.fields == {"phone": "4155550142", "note": "", "n": "7"}
    assert lead.e164 == "+14155550142"


def test_query_text_reaches_the_server_as_written(db: Db) -> None:
    """`%` is not a driver placeholder and `:name` is not a bind parameter in a lead query."""
    source = sources.open_source(
        db.url, query="SELECT '4155550142' AS phone, 'a%b %s :x 10:30' AS note", table=None
    )
    assert [lead.fields["note"] for lead in source] == ["a%b %s :x 10:30"]


def test_key_is_the_query_against_the_database_without_password(
    postgres: Db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = postgres.create(["phone"], [("+12125550123",)])
    plain = sources.open_source(POSTGRES, query=None, table=table)
    # trust auth accepts any password: the same database, seen through another spelling
    secret_url = with_password(POSTGRES).replace("postgresql://", "postgresql+psycopg://")
    secret = sources.open_source(secret_url, query=None, table=table)
    assert secret.key == plain.key
    assert SECRET not in secret.name and ":***@" in secret.name
    other = sources.open_source(POSTGRES, query=f"SELECT * FROM {table}", table=None)
    assert other.key != plain.key
    # SQLite: the same file by relative and absolute path is the same source
    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (phone TEXT)")
        conn.execute("INSERT INTO t VALUES ('+12125550123')")
    monkeypatch.chdir(tmp_path)
    relative = sources.open_source("sqlite:///crm.db", query=None, table="t")
    absolute = sources.open_source(f"sqlite:///{path}", query=None, table="t")
    assert relative.key == absolute.key
    assert relative.name == "sqlite:///crm.db (table t)"


def test_url_spellings() -> None:
    assert sources.is_database_url("postgresql://u@h/db")
    assert sources.is_database_url("mysql+pymysql://u@h/db")
    assert sources.is_database_url("sqlite:///crm.db")
    assert not sources.is_database_url("leads.csv")
    assert not sources.is_database_url("/tmp/leads.csv")
    assert not sources.is_database_url("C:\\leads.csv")
    raw = "postgresql://crm:p%40ss@db.example/crm?password=s3cret&ssl=1"
    url = sources.DatabaseUrl.parse(raw)
    assert url.driver == "postgresql+psycopg"
    assert url.masked == "postgresql://crm:***@db.example/crm?password=***&ssl=1"
    assert url.scrub("login p@ss / p%40ss / s3cret") == "login *** / *** / ***"
    assert url.identity == "postgresql+psycopg://crm@db.example/crm?ssl=1"
    assert sources.DatabaseUrl.parse("mysql://root@h/db").driver == "mysql+pymysql"
    assert sources.DatabaseUrl.parse("sqlite:////srv/crm.db").masked == "sqlite:////srv/crm.db"


def test_a_csv_path_still_opens_as_csv(tmp_path: Path) -> None:
    path = tmp_path / "leads.csv"
    path.write_text("phone\n+12125550123\n")
    source = sources.open_source(str(path), query=None, table=None)
    assert source.name == str(path) and source.key.startswith("sha256:")
    assert sources.count_rows(source) == 1
    message = error_of(str(path), query="SELECT 1")
    assert "--query and --table apply to a database URL" in message


def test_importing_the_module_does_not_import_sqlalchemy() -> None:
    code = "import sys, dialer_cli.sources; print('sqlalchemy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- streaming ------------------------------------------------------------------------------------

BIG = 50_000


def big_table(db: Db) -> str:
    rows = [
        (f"+1212555{n:04d}" if n < 10_000 else f"+1646555{n % 10_000:04d}", f"lead {n}")
        for n in range(BIG)
    ]
    return db.create(["phone", "name"], rows)


def peak_bytes(work: Callable[[], object]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def drain(source: LeadSource) -> int:
    return sum(1 for _ in source.records())


def test_rows_are_streamed_not_loaded_whole(db: Db) -> None:
    """Reading every row peaks far below holding them all: the driver hands them over in batches."""
    source = sources.open_source(db.url, query=None, table=big_table(db))
    assert drain(source) == BIG
    streamed = peak_bytes(lambda: drain(source))
    loaded = peak_bytes(lambda: list(source.records()))
    assert streamed * 5 < loaded, (streamed, loaded)


def spy_fetches(monkeypatch: pytest.MonkeyPatch, cursor_class: type) -> list[int]:
    """Record how many rows each fetchmany of the driver's server-side cursor returns."""
    fetched: list[int] = []
    original = cursor_class.fetchmany

    def fetchmany(self: Any, *args: Any, **kwargs: Any) -> Any:
        rows = original(self, *args, **kwargs)
        fetched.append(len(rows))
        return rows

    monkeypatch.setattr(cursor_class, "fetchmany", fetchmany)
    return fetched


def assert_batched(source: LeadSource, fetched: list[int]) -> None:
    fetched.clear()
    leads = iter(source)
    next(leads)
    assert 0 < sum(fetched) <= sources.BATCH  # the first lead came before the rest was fetched
    assert sum(1 for _ in leads) == BIG - 1
    assert sum(fetched) == BIG and max(fetched) <= sources.BATCH


def test_postgres_uses_a_server_side_cursor(postgres: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    source = sources.open_source(POSTGRES, query=None, table=big_table(postgres))
    assert_batched(source, spy_fetches(monkeypatch, psycopg.ServerCursor))


def test_mysql_uses_an_unbuffered_cursor(mysql: Db, monkeypatch: pytest.MonkeyPatch) -> None:
    import pymysql.cursors

    source = sources.open_source(MYSQL, query=None, table=big_table(mysql))
    assert_batched(source, spy_fetches(monkeypatch, pymysql.cursors.SSCursor))


# -- errors ---------------------------------------------------------------------------------------


def test_unknown_scheme_and_bad_url() -> None:
    message = error_of(f"oracle://scott:{SECRET}@db/crm")
    assert message.startswith("oracle://scott:***@db/crm: unsupported database URL scheme")
    pytest.importorskip("sqlalchemy")
    message = error_of(f"postgresql://postgres:{SECRET}@127.0.0.1:port/test")
    assert "not a valid database URL" in message


def test_exactly_one_of_query_and_table() -> None:
    url = f"postgresql://u:{SECRET}@127.0.0.1:1/db"
    assert "exactly one of --query" in error_of(url, query=None, table=None)
    assert "exactly one of --query" in error_of(url, query="SELECT 1", table="t")
    assert "exactly one of --query" in error_of(url, query="  ", table=None)


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_connection_refused(scheme: str) -> None:
    pytest.importorskip("sqlalchemy")
    message = error_of(f"{scheme}://postgres:{SECRET}@127.0.0.1:1/test")
    assert message.startswith(f"{scheme}://postgres:***@127.0.0.1:1/test (query): cannot connect")
    assert "refused" in message


@pytest.mark.parametrize("scheme", ["postgresql", "mysql"])
def test_unknown_host(scheme: str) -> None:
    pytest.importorskip("sqlalchemy")
    message = error_of(f"{scheme}://u:{SECRET}@no-such-host.invalid/test")
    assert "cannot connect" in message and "no-such-host.invalid" in message


def test_postgres_login_refused_and_password_scrubbed_from_driver_text(postgres: Db) -> None:
    nobody = POSTGRES.replace("//postgres@", f"//nobody_{uuid.uuid4().hex[:6]}@")
    message = error_of(with_password(nobody))
    assert "cannot connect" in message and "does not exist" in message
    # the driver names the database, which here is the password: scrubbed all the same
    message = error_of(with_password(POSTGRES).rsplit("/", 1)[0] + f"/{SECRET}")
    assert 'database "***" does not exist' in message


def test_mysql_wrong_password(mysql: Db) -> None:
    message = error_of(with_password(MYSQL))
    assert "cannot connect (Access denied" in message


def test_failing_query_and_missing_table(db: Db) -> None:
    message = error_of(db.url, query="SELEC phone FROM nowhere")
    assert "(query): the query failed (" in message and "syntax" in message.lower()
    message = error_of(db.url, query="SELECT phone FROM no_such_table_here")
    assert "the query failed" in message and "no_such_table_here" in message
    message = error_of(db.url, query=None, table="no_such_table_here")
    assert "(table no_such_table_here): cannot read table no_such_table_here (" in message


def test_error_while_reading_rows(postgres: Db) -> None:
    """The server fails on row 2500, long after the first batch was checked and read."""
    rows = [(f"+1212555{n:04d}", str(n)) for n in range(3000)]
    table = postgres.create(["phone", "n"], rows)
    n = "CAST(n AS integer)"
    query = f"SELECT phone, 10 / ({n} - 2500) AS x FROM {table}"  # no ORDER BY: computed lazily
    source = sources.open_source(POSTGRES, query=query, table=None)
    with pytest.raises(LeadsError) as info:
        list(source)
    assert str(info.value) == (
        f"{POSTGRES} (query): reading the rows failed (division by zero); nothing was imported"
    )


def test_result_without_the_phone_column(db: Db) -> None:
    table = db.create(["name", "mobile"], [("Ada", "+12125550123")])
    message = error_of(db.url, query=None, table=table)
    assert f"(table {table}): no 'phone' column (found: name, mobile)" in message
    assert "--phone-column" in message


def test_duplicate_column_names(db: Db) -> None:
    message = error_of(db.url, query="SELECT '1' AS phone, '2' AS PHONE")
    assert "duplicate column names 'phone' and '" in message  # PostgreSQL folds PHONE to phone


def test_empty_result_says_no_leads(db: Db) -> None:
    table = db.create(["name", "phone"], [])
    message = error_of(db.url, query=None, table=table)
    assert message.endswith(f"(table {table}): no leads: table {table} is empty")
    message = error_of(db.url, query=f"SELECT * FROM {db.quote(table)} WHERE 1 = 0")
    assert "no leads: the query returned no rows" in message


def test_a_lead_source_is_only_read(db: Db) -> None:
    """A query that would write fails and writes nothing (a SELECT can bump a sequence)."""
    table = db.create(["phone"], [("+12125550123",)])
    if db.kind == "sqlite":
        message = error_of(db.url, query=f"DELETE FROM {q(table)} RETURNING phone")
        assert "readonly database" in message
    else:
        seq = f"{table}_seq"
        try:
            db.execute(f"CREATE SEQUENCE {seq}")
        except Exception as exc:  # noqa: BLE001 - MySQL proper has no sequences
            pytest.skip(f"{db.kind}: cannot create a sequence to try a write ({exc})"[:200])
        try:
            call = f"nextval('{seq}')" if db.kind == "postgres" else f"NEXTVAL({seq})"
            message = error_of(db.url, query=f"SELECT {call} AS phone")
        finally:
            db.execute(f"DROP SEQUENCE {seq}")
        assert "read-only transaction" in message or "READ ONLY transaction" in message
    assert sources.count_rows(sources.open_source(db.url, query=None, table=table)) == 1


def test_sqlite_file_must_exist_and_is_never_created(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    message = error_of(f"sqlite:///{missing}", query=None, table="t")
    assert f"{missing}: file not found" in message
    assert not missing.exists()
    assert "is a directory" in error_of(f"sqlite:///{tmp_path}", query=None, table="t")
    junk = tmp_path / "junk.db"
    junk.write_text("not a database at all, just text that is long enough " * 20)
    assert "not a database" in error_of(f"sqlite:///{junk}", query=None, table="t")


def test_unknown_region(tmp_path: Path) -> None:
    path = tmp_path / "crm.db"
    sqlite3.connect(path).close()
    message = error_of(f"sqlite:///{path}", query=None, table="t", default_region="XX")
    assert "unknown default region 'XX'" in message


@pytest.mark.parametrize(
    ("url", "extra"),
    [(f"postgresql://u:{SECRET}@h/db", "postgres"), (f"mysql://u:{SECRET}@h/db", "mysql")],
)
@pytest.mark.parametrize("module", ["sqlalchemy", "driver"])
def test_missing_extra(url: str, extra: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    driver = "psycopg" if extra == "postgres" else "pymysql"
    monkeypatch.setitem(sys.modules, driver if module == "driver" else "sqlalchemy", None)
    message = error_of(url)
    assert message.endswith(f"needs the {extra} extra: pip install 'dialer-cli[{extra}]'")
    assert message.startswith(url.replace(SECRET, "***"))
