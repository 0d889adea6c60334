"""`dialer doctor`: every precondition of a campaign checked up front, one line each.

A run that fails at 2 a.m. in cron because the database directory moved or the token was rotated
wastes a night; the doctor tries each thing the way `start` would use it (open the database for
writing, run the lead query, make one read-only Twilio request) without changing anything: no
database is created or migrated, no lead imported, no call placed. Checks never raise for the
problems they look for: a failure is a `Check` with ok=False, so the user sees all of them at once.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dialer_cli import runner, sources
from dialer_cli.config import Settings, default_config_path, load_settings
from dialer_cli.errors import ConfigError, DialerError, TwilioFailure, redact
from dialer_cli.store import SCHEMA_VERSION, Store, unwritable

if TYPE_CHECKING:
    from dialer_cli.twilio_adapter import TwilioCalls

LOCK_TIMEOUT = 5.0  # seconds to wait for a writer (a running `dialer start`) to let go
CLOCK_WARN = 5.0  # seconds between our clock and Twilio's that deserve a warning


@dataclass(frozen=True)
class Check:
    """One line of the report: `ok   config  /path/config.yaml (3 sections, campaign nightly)`."""

    name: str
    ok: bool
    detail: str


def diagnose(
    *,
    config_path: Path | None,
    env: Mapping[str, str],
    db_path: Path,
    campaign: str | None = None,
    source: str | None = None,
    query: str | None = None,
    table: str | None = None,
    simulate: bool = False,
    overrides: Mapping[str, object] | None = None,
) -> list[Check]:
    """Load the settings and run every check: a config that does not load is a failed check too,
    and the database is still checked, since it does not depend on the config."""
    try:
        settings = load_settings(config_path, env, overrides)
        if campaign in settings.campaigns:  # an unknown campaign is reported by the config check
            settings = load_settings(config_path, env, overrides, campaign=campaign)
    except ConfigError as exc:
        return [Check("config", False, str(exc)), check_database(db_path)]
    return run_checks(
        settings=settings,
        config_path=config_path,
        db_path=db_path,
        campaign=campaign,
        source=source,
        query=query,
        table=table,
        simulate=simulate,
    )


def run_checks(
    *,
    settings: Settings,
    config_path: Path | None,
    db_path: Path,
    campaign: str | None,
    source: str | None = None,
    query: str | None = None,
    table: str | None = None,
    simulate: bool = False,
) -> list[Check]:
    """config, database, source (when a campaign or SOURCE names one), twilio and from, in order."""
    checks = [check_config(settings, config_path, campaign), check_database(db_path)]
    chosen = _chosen_source(settings, campaign, source, query, table)
    if chosen is not None:
        checks.append(check_source(settings, *chosen))
    checks += check_twilio(settings, simulate)
    token = settings.twilio.auth_token
    if token:  # belt and braces: no detail may ever carry the token, whatever a server echoed
        checks = [Check(c.name, c.ok, redact(c.detail, token)) for c in checks]
    return checks


# -- config ---------------------------------------------------------------------------------------


def check_config(settings: Settings, config_path: Path | None, campaign: str | None) -> Check:
    path = settings.path or config_path
    if path is None:
        where = f"no config file ({default_config_path()} not found): defaults and environment"
    else:
        where = f"{path} ({_count(len(_sections(settings)), 'section')}"
        where += f", campaign {campaign})" if campaign else ")"
    if campaign is not None and campaign not in settings.campaigns:
        known = ", ".join(settings.campaigns) or "none"
        return Check("config", False, f"{path}: unknown campaign {campaign!r}; known: {known}")
    return Check("config", True, where)


def _sections(settings: Settings) -> set[str]:
    found = {
        key.split(".")[0]
        for key, origin in settings.sources.items()
        if origin.startswith("file ") and "(campaign " not in origin
    }
    return found | ({"campaigns"} if settings.campaigns else set())


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


# -- database -------------------------------------------------------------------------------------


def check_database(path: Path) -> Check:
    """Writable and of a schema this dialer can use, proven without leaving anything behind."""
    try:
        return Check("database", True, _database_detail(path))
    except (DialerError, sqlite3.Error, OSError) as exc:
        return Check("database", False, _database_problem(path, exc))


def _database_detail(path: Path) -> str:
    if path.is_dir():
        raise DialerError(f"{path} is a directory; pass --db with a file path")
    if not path.exists():
        return f"{path} (will be created; {_creatable(path)} is writable)"
    version = _schema_version(path)
    if version > SCHEMA_VERSION:
        raise DialerError(
            f"{path} was written by a newer dialer (schema {version}, this one knows "
            f"{SCHEMA_VERSION}); upgrade dialer"
        )
    if version == SCHEMA_VERSION:
        store = Store.open(path, timeout=LOCK_TIMEOUT)  # the exact path `start` takes
        with closing(store.conn):
            _try_write(store.conn)
        return f"{path} (schema {version}, writable)"
    with _raw(path, "rw") as conn:  # Store.open would migrate it: doctor changes nothing
        _try_write(conn)
    return f"{path} (schema {version}, migrates to {SCHEMA_VERSION} on the next write; writable)"


def _database_problem(path: Path, exc: BaseException) -> str:
    if path.exists() and (why := unwritable(path)):
        return f"{path} cannot be written: {why}"
    if isinstance(exc, DialerError):
        return str(exc)
    if isinstance(exc, OSError):
        return f"{path}: cannot be created ({exc.strerror or exc})"
    text = str(exc)
    if "locked" in text or "busy" in text:
        return f"{path} is locked by another process for over {LOCK_TIMEOUT:g} s"
    if "readonly" in text or "read-only" in text:
        return f"{path} cannot be written (read-only file or file system)"
    return f"{path}: {text}"


def _creatable(path: Path) -> Path:
    """The nearest existing ancestor, proven writable by creating (and removing) a temp file."""
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DialerError(f"{path} cannot be created: {ancestor} is a file, not a directory")
    with tempfile.TemporaryFile(dir=ancestor, prefix=".dialer-doctor-"):
        pass
    return ancestor


def _schema_version(path: Path) -> int:
    with _raw(path, "ro") as conn:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if version == 0 and tables:
        raise DialerError(f"{path} is an SQLite database, but not a dialer one; pass another --db")
    return version


@contextmanager
def _raw(path: Path, mode: str) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode={mode}",
        uri=True,
        timeout=LOCK_TIMEOUT,
        isolation_level=None,
    )
    try:
        yield conn
    finally:
        conn.close()


def _try_write(conn: sqlite3.Connection) -> None:
    """Take the write lock and let it go: proves writability, writes nothing."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")


# -- lead source ----------------------------------------------------------------------------------

Chosen = tuple[str, str | None, str | None]


def _chosen_source(
    settings: Settings,
    campaign: str | None,
    source: str | None,
    query: str | None,
    table: str | None,
) -> Chosen | None:
    """SOURCE and its flags if given, else the campaign's own source, query and table."""
    if source is not None:
        return source, query, table
    if campaign in settings.campaigns:
        spec = settings.campaigns[campaign]
        if query is not None or table is not None:  # a flag replaces the campaign's choice
            return spec.source, query, table
        return spec.source, spec.query, spec.table
    return None


def check_source(settings: Settings, source: str, query: str | None, table: str | None) -> Check:
    """Open the source as `start` would (connect, query, phone column) and count its rows."""
    try:
        opened = sources.open_source(
            source,
            query=query,
            table=table,
            phone_column=settings.leads.phone_column,
            default_region=settings.leads.default_region,
        )
        rows = sources.count_rows(opened)
    except DialerError as exc:
        return Check("source", False, str(exc))
    detail = f"{opened.name}: {_count(rows, 'lead')}, phone column {opened.phone_column!r}"
    return Check("source", True, detail)


# -- Twilio ---------------------------------------------------------------------------------------


def check_twilio(settings: Settings, simulate: bool) -> list[Check]:
    """Credentials present and accepted (one read-only request), our clock against Twilio's
    (from that answer's Date header), then the From numbers."""
    if simulate:
        return [Check("twilio", True, "simulated: the built-in simulator needs no account")]
    try:
        target = runner.twilio_target(settings)  # the credential checks `start` makes
    except ConfigError as exc:
        return [Check("twilio", False, str(exc))]
    calls = runner.open_calls(target)
    try:
        name = calls.check_account()
    except TwilioFailure as exc:
        return [Check("twilio", False, _refused(settings, exc))]
    origin = settings.sources.get("twilio.auth_token", "default")
    account = f"account {name!r} {runner.short_sid(target.account_sid)}"
    detail = f"{account}{_at(settings)} (token from {origin}: accepted)"
    checks = [Check("twilio", True, detail), check_clock(calls.clock_offset())]
    return [*checks, check_from_numbers(settings, calls)]


def check_clock(offset: float) -> Check:
    """A warning, never a failure: reconciliation widens its window by the measured offset,
    but logs and calling hours read this machine's clock, so a wrong one is worth fixing."""
    if abs(offset) <= CLOCK_WARN:
        return Check("clock", True, f"within {CLOCK_WARN:g} s of Twilio's ({offset:+.1f} s)")
    way = "ahead of" if offset > 0 else "behind"
    return Check(
        "clock",
        True,
        f"warning: this machine's clock is {abs(offset):.0f} s {way} Twilio's; reconciliation "
        "allows for it, but set the clock right (NTP)",
    )


def _refused(settings: Settings, exc: TwilioFailure) -> str:
    if exc.kind == "account":
        origin = settings.sources.get("twilio.auth_token", "default")
        return f"{exc}{_at(settings)}; check twilio.account_sid and the token (from {origin})"
    if exc.unreachable:
        where = settings.twilio.base_url
        return f"cannot reach Twilio at {where} ({exc}); check the network and twilio.base_url"
    return f"{exc}{_at(settings)}; check the network and twilio.base_url"


def _at(settings: Settings) -> str:
    base = settings.twilio.base_url
    return "" if base == "https://api.twilio.com" else f" at {base}"


def check_from_numbers(settings: Settings, calls: TwilioCalls) -> Check:
    """Each From number is one of the account's own: Twilio refuses a call from any other."""
    numbers = list(
        dict.fromkeys(n for n in (settings.twilio.from_number, *settings.twilio.from_numbers) if n)
    )
    try:
        foreign = [n for n in numbers if not calls.owns_number(n)]
    except TwilioFailure as exc:
        return Check("from", False, f"cannot list the account's numbers ({exc})")
    if foreign:
        return Check(
            "from",
            False,
            f"{', '.join(foreign)} not among this account's phone numbers; "
            "set twilio.from_number to a number the account owns",
        )
    return Check("from", True, f"{', '.join(numbers)}: owned by the account")
