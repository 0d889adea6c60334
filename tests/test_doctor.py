"""`dialer doctor`: a working setup is all ok, and each broken piece fails on its own line, without
the doctor changing anything (no database created or migrated, no lead imported, no call placed).

Twilio is the real adapter talking to the in-process simulator. Tests run as root, so an unwritable
database is a directory or a path under a regular file, never a file mode.
"""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dialer_cli import doctor
from dialer_cli.doctor import Check
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator
from dialer_cli.store import SCHEMA_VERSION, Store

FROM = "+14155550100"
NAMES = ["config", "database", "source", "twilio", "clock", "from"]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(from_numbers=[FROM, "+14155550101"]) as simulator:
        yield simulator


@pytest.fixture
def crm(tmp_path: Path) -> Path:
    path = tmp_path / "crm.db"
    with closing_db(path) as conn:
        conn.execute('CREATE TABLE leads ("Name" TEXT, "Phone" TEXT)')
        conn.executemany(
            "INSERT INTO leads VALUES (?, ?)",
            [("Ada", "(415) 555-0142"), ("Bob", "+12125550123"), ("Cy", None)],
        )
    return path


class closing_db:  # noqa: N801 - reads like contextlib.closing
    """sqlite3's own context manager commits but does not close."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path)

    def __enter__(self) -> sqlite3.Connection:
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.commit()
        self.conn.close()


def write_config(tmp_path: Path, sim: Simulator, crm: Path, **twilio: str) -> Path:
    values = {
        "account_sid": DEFAULT_ACCOUNT_SID,
        "auth_token": DEFAULT_AUTH_TOKEN,
        "from_number": FROM,
        "base_url": sim.url,
    } | twilio
    lines = "".join(f'  {k}: "{v}"\n' for k, v in values.items() if v)
    text = f"""\
        dialing:
          concurrency: 2
        leads:
          phone_column: phone
        campaigns:
          nightly:
            source: "sqlite:///{crm}"
            table: leads
          broken:
            source: "sqlite:///{crm}"
            query: SELECT * FROM no_such_table
        """
    path = tmp_path / "config.yaml"
    path.write_text("twilio:\n" + lines + textwrap.dedent(text), encoding="utf-8")
    return path


def diagnose(config: Path | None, db: Path, **kwargs: Any) -> list[Check]:
    kwargs.setdefault("campaign", "nightly")
    checks = doctor.diagnose(config_path=config, env={}, db_path=db, **kwargs)
    for check in checks:
        assert "\n" not in check.detail
        assert DEFAULT_AUTH_TOKEN not in check.detail and "wrong-token" not in check.detail
    return checks


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def failed(checks: list[Check]) -> dict[str, str]:
    return {check.name: check.detail for check in checks if not check.ok}


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


# -- a working setup ------------------------------------------------------------------------------


def test_working_setup_is_all_ok_and_changes_nothing(
    tmp_path: Path, sim: Simulator, crm: Path
) -> None:
    config = write_config(tmp_path, sim, crm)
    db = tmp_path / "data" / "dialer.db"
    before = files(tmp_path)
    checks = diagnose(config, db)
    assert [c.name for c in checks] == NAMES
    assert failed(checks) == {}
    got = by_name(checks)
    assert got["config"].detail == f"{config} (4 sections, campaign nightly)"
    assert got["database"].detail == f"{db} (will be created; {tmp_path} is writable)"
    assert got["source"].detail == f"sqlite:///{crm} (table leads): 3 leads, phone column 'Phone'"
    assert got["twilio"].detail == (
        f"account 'Simulated account' AC0000…0001 at {sim.url} (token from file {config}: accepted)"
    )
    assert got["from"].detail == f"{FROM}: owned by the account"
    assert not db.parent.exists()
    assert files(tmp_path) == before
    assert sim.creates() == []


def test_existing_database_is_opened_for_writing_and_left_as_it_was(
    tmp_path: Path, sim: Simulator, crm: Path
) -> None:
    db = tmp_path / "data" / "dialer.db"
    Store.open(db).close()
    before = files(db.parent)
    checks = diagnose(write_config(tmp_path, sim, crm), db)
    assert by_name(checks)["database"] == Check(
        "database", True, f"{db} (schema {SCHEMA_VERSION}, writable)"
    )
    assert files(db.parent) == before


def test_an_old_schema_is_reported_as_migratable_but_not_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    db.touch()  # schema 0: what an interrupted first start leaves
    check = doctor.check_database(db)
    assert check.ok and f"schema 0, migrates to {SCHEMA_VERSION} on the next write" in check.detail
    assert db.read_bytes() == b""


def test_a_source_given_on_the_command_line(tmp_path: Path, sim: Simulator, crm: Path) -> None:
    csv = tmp_path / "leads.csv"
    csv.write_text("name,phone\nAda,+12125550123\n\nBob,+12125550124\n")
    checks = diagnose(
        write_config(tmp_path, sim, crm), tmp_path / "d.db", campaign=None, source=str(csv)
    )
    assert by_name(checks)["source"] == Check(
        "source", True, f"{csv}: 2 leads, phone column 'phone'"
    )
    query = "SELECT * FROM leads WHERE Name <> 'Cy'"
    checks = diagnose(
        write_config(tmp_path, sim, crm), tmp_path / "d.db", source=f"sqlite:///{crm}", query=query
    )
    assert "(query): 2 leads" in by_name(checks)["source"].detail
    checks = diagnose(write_config(tmp_path, sim, crm), tmp_path / "d.db", query=query)
    assert by_name(checks)["source"].detail.startswith(f"sqlite:///{crm} (query): 2 leads")


def test_no_source_no_source_line_and_simulate_needs_no_account(tmp_path: Path) -> None:
    checks = diagnose(None, tmp_path / "d.db", campaign=None, simulate=True)
    assert [c.name for c in checks] == ["config", "database", "twilio"]
    assert failed(checks) == {}
    assert checks[0].detail.startswith("no config file (")
    assert checks[2].detail == "simulated: the built-in simulator needs no account"


# -- broken setups --------------------------------------------------------------------------------


def test_wrong_token(tmp_path: Path, sim: Simulator, crm: Path) -> None:
    checks = diagnose(write_config(tmp_path, sim, crm, auth_token="wrong-token"), tmp_path / "d.db")
    assert [c.name for c in checks] == NAMES[:4]  # no From check without an account
    assert failed(checks) == {
        "twilio": f"Twilio refused the credentials (Twilio error 20003) at {sim.url}; "
        f"check twilio.account_sid and the token (from file {tmp_path / 'config.yaml'})"
    }


@pytest.mark.parametrize("token", ["x", "tok", "he"])
def test_a_short_token_is_masked_as_a_value_never_inside_words(
    tmp_path: Path, sim: Simulator, crm: Path, token: str
) -> None:
    config = write_config(tmp_path, sim, crm, auth_token=token, account_sid="ACnope")
    problem = failed(doctor.diagnose(config_path=config, env={}, db_path=tmp_path / "d.db"))
    assert "expected 'AC' and 32 hex digits" in problem["twilio"]
    assert "***" not in problem["twilio"]
    config = write_config(tmp_path, sim, crm, auth_token=token)
    problem = failed(doctor.diagnose(config_path=config, env={}, db_path=tmp_path / "d.db"))
    assert "check twilio.account_sid and the token (from file" in problem["twilio"]


def test_the_token_is_masked_where_it_stands_as_a_value() -> None:
    from dialer_cli.errors import redact

    assert redact("Bearer x; expected x@host", "x") == "Bearer ***; expected ***@host"


def test_missing_credentials(tmp_path: Path, sim: Simulator, crm: Path) -> None:
    checks = diagnose(write_config(tmp_path, sim, crm, auth_token=""), tmp_path / "d.db")
    assert failed(checks)["twilio"].startswith("missing twilio.auth_token; set TWILIO_AUTH_TOKEN")


def test_twilio_does_not_answer(tmp_path: Path, sim: Simulator, crm: Path) -> None:
    config = write_config(tmp_path, sim, crm, base_url="http://127.0.0.1:1")
    problem = failed(diagnose(config, tmp_path / "d.db"))["twilio"]
    assert problem.startswith("cannot reach Twilio at http://127.0.0.1:1 (connection refused)")


def test_from_number_not_owned(tmp_path: Path, sim: Simulator, crm: Path) -> None:
    config = write_config(tmp_path, sim, crm, from_number="+14155550199")
    assert failed(diagnose(config, tmp_path / "d.db")) == {
        "from": "+14155550199 not among this account's phone numbers; "
        "set twilio.from_number to a number the account owns"
    }


def test_missing_table_in_the_source(tmp_path: Path, sim: Simulator, crm: Path) -> None:
    checks = diagnose(write_config(tmp_path, sim, crm), tmp_path / "d.db", campaign="broken")
    assert failed(checks) == {
        "source": f"sqlite:///{crm} (query): the query failed "
        "(no such table: no_such_table); check the SQL"
    }
    assert [c.name for c in checks] == NAMES


def test_unknown_campaign(tmp_path: Path, sim: Simulator, crm: Path) -> None:
    config = write_config(tmp_path, sim, crm)
    checks = diagnose(config, tmp_path / "d.db", campaign="weekly")
    assert [c.name for c in checks] == ["config", "database", "twilio", "clock", "from"]
    assert failed(checks) == {
        "config": f"{config}: unknown campaign 'weekly'; known: nightly, broken"
    }


def test_config_that_does_not_load(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("twilio:\n  auth_token: 'tok\n")
    checks = diagnose(config, tmp_path / "d.db")
    assert [(c.name, c.ok) for c in checks] == [("config", False), ("database", True)]
    assert checks[0].detail.startswith(f"{config}: line ")


@pytest.mark.parametrize("where", ["directory", "under a file", "file as ancestor"])
def test_database_path_that_cannot_be_written(tmp_path: Path, where: str) -> None:
    (tmp_path / "somefile").write_text("x")
    path = {
        "directory": tmp_path,
        "under a file": tmp_path / "somefile" / "d.db",
        "file as ancestor": tmp_path / "somefile" / "deeper" / "d.db",
    }[where]
    check = doctor.check_database(path)
    assert not check.ok
    if where == "directory":
        assert check.detail == f"{tmp_path} is a directory; pass --db with a file path"
    else:
        assert check.detail == (
            f"{path} cannot be created: {tmp_path / 'somefile'} is a file, not a directory"
        )
    assert (tmp_path / "somefile").read_text() == "x"


def test_database_of_a_newer_dialer_or_not_a_dialer_database(tmp_path: Path, crm: Path) -> None:
    newer = tmp_path / "newer.db"
    with closing_db(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    check = doctor.check_database(newer)
    assert not check.ok and "written by a newer dialer" in check.detail
    check = doctor.check_database(crm)
    assert check == Check(
        "database", False, f"{crm} is an SQLite database, but not a dialer one; pass another --db"
    )
    junk = tmp_path / "junk.db"
    junk.write_text("not a database " * 100)
    check = doctor.check_database(junk)
    assert not check.ok and "not a database" in check.detail


def test_database_locked_by_another_writer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "d.db"
    Store.open(db).close()
    monkeypatch.setattr(doctor, "LOCK_TIMEOUT", 0.1)
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        check = doctor.check_database(db)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert check == Check("database", False, f"{db} is locked by another process for over 0.1 s")
