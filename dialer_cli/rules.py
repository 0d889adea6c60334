"""Campaign rules that decide whether, when and how a lead may be called.

Calling hours (in the lead's own time), caller ID choice, per-lead TwiML/URL templates, the
do-not-call file and create pacing. Pure functions of their inputs and a clock, so the engine
can apply them inside its loop and tests can drive them through any hour of any day.
"""

from __future__ import annotations

import html
import string
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dialer_cli.errors import ConfigError, InputError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
TWIML_MAX = 4000  # Twilio rejects longer inline TwiML
NEIGHBOURING_HOURS = 3  # zones a number may be in, this close together, must all be in hours


# -- calling hours ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Hours:
    """A daily window such as 09:00-20:00 on some weekdays, in the callee's local time."""

    start: int  # minutes after midnight
    end: int
    days: frozenset[int]  # 0 = Monday

    @classmethod
    def parse(cls, window: str, days: Iterable[str] | None) -> Hours:
        first, _, last = window.partition("-")
        return cls(_minutes(first), _minutes(last), frozenset(DAYS.index(d) for d in days or DAYS))

    def open_in(self, zone: str, at: float) -> bool:
        local = datetime.fromtimestamp(at, _zone(zone))
        minute = local.hour * 60 + local.minute
        if self.start <= self.end:
            return local.weekday() in self.days and self.start <= minute < self.end
        # a window across midnight belongs to the day it starts on
        if minute >= self.start:
            return local.weekday() in self.days
        return minute < self.end and (local.weekday() - 1) % 7 in self.days

    def open_all(self, zones: tuple[str, ...], at: float) -> bool:
        return all(self.open_in(z, at) for z in zones)

    def next_open(self, zones: tuple[str, ...], at: float) -> float | None:
        """When the window next holds in every zone (now if it does), within a week."""
        if self.open_all(zones, at):
            return at
        candidates = sorted(
            t for z in zones for t in self._starts(z, at) if t > at and self.open_all(zones, t)
        )
        return candidates[0] if candidates else None

    def _starts(self, zone: str, at: float) -> Iterable[float]:
        tz = _zone(zone)
        today = datetime.fromtimestamp(at, tz).date()
        for offset in range(9):
            day = today + timedelta(days=offset)
            start = datetime(day.year, day.month, day.day, tzinfo=tz) + timedelta(
                minutes=self.start
            )
            yield start.timestamp()


def _minutes(hhmm: str) -> int:
    hours, _, minutes = hhmm.strip().partition(":")
    return int(hours) * 60 + int(minutes)


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def lead_zones(e164: str, column: str | None, fallback: str) -> tuple[str, ...]:
    """The zones a lead may be in: its own `timezone` column, else its number's, else fallback.

    A number spread over zones far apart (US toll-free: Hawaii to Newfoundland) says nothing
    useful about where the callee is, so the configured zone decides.
    """
    if column:
        try:
            _zone(column)
            return (column,)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    zones = _number_zones(e164)
    if not zones:
        return (fallback,)
    now = datetime.now(UTC)
    offsets = [now.astimezone(_zone(z)).utcoffset() or timedelta() for z in zones]
    if max(offsets) - min(offsets) > timedelta(hours=NEIGHBOURING_HOURS):
        return (fallback,)
    return zones


@lru_cache(maxsize=65536)
def _number_zones(e164: str) -> tuple[str, ...]:
    import phonenumbers
    from phonenumbers import timezone

    try:
        zones = timezone.time_zones_for_number(phonenumbers.parse(e164))
    except phonenumbers.NumberParseException:
        return ()
    known = []
    for z in zones:
        try:
            _zone(z)
            known.append(z)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return tuple(known)


def local_zone() -> str:
    """This machine's zone name, for `dialing.timezone: null`."""
    key = getattr(datetime.now().astimezone().tzinfo, "key", None)
    if key:
        return str(key)
    try:
        link = Path("/etc/localtime").resolve()
        return str(link).split("zoneinfo/", 1)[1]
    except (OSError, IndexError):
        return "UTC"


# -- caller ID -------------------------------------------------------------------------------


class CallerId:
    """Prefer a From number in the lead's country and area code; otherwise rotate."""

    def __init__(self, numbers: Iterable[str]):
        self.numbers = list(numbers)
        self._next = 0

    def __call__(self, to: str) -> str:
        if len(self.numbers) == 1:
            return self.numbers[0]
        country, area = _place(to)
        same_area = [n for n in self.numbers if area and _place(n) == (country, area)]
        same_country = [n for n in self.numbers if _place(n)[0] == country]
        return self._rotate(same_area or same_country or self.numbers)

    def _rotate(self, pool: list[str]) -> str:
        self._next += 1
        return pool[self._next % len(pool)]


@lru_cache(maxsize=65536)
def _place(e164: str) -> tuple[int, str | None]:
    """(country code, geographic area code or None) of a number."""
    import phonenumbers

    try:
        number = phonenumbers.parse(e164)
    except phonenumbers.NumberParseException:
        return 0, None
    length = phonenumbers.length_of_geographical_area_code(number)
    national = phonenumbers.national_significant_number(number)
    return int(number.country_code or 0), national[:length] if length else None


# -- templates -------------------------------------------------------------------------------


def template_fields(template: str | None) -> set[str]:
    if not template:
        return set()
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def check_template_columns(template: str | None, key: str, columns: Iterable[str]) -> None:
    missing = template_fields(template) - set(columns)
    if missing:
        raise ConfigError(
            f"{key} names {', '.join('{' + m + '}' for m in sorted(missing))}, "
            f"but the leads have no such column (columns: {', '.join(columns)})"
        )


def fill_twiml(template: str, fields: dict[str, str]) -> str:
    """Lead values become text inside the TwiML, never markup."""
    return template.format_map({k: html.escape(v) for k, v in fields.items()})


def fill_url(template: str, fields: dict[str, str]) -> str:
    return template.format_map({k: quote(v, safe="") for k, v in fields.items()})


def check_twiml_length(twiml: str, line: int, source: str, key: str = "call.twiml") -> None:
    if len(twiml) > TWIML_MAX:
        raise InputError(
            f"{source}: line {line}: the filled {key} is {len(twiml)} characters; "
            f"Twilio accepts at most {TWIML_MAX}"
        )


# -- do-not-call file -----------------------------------------------------------------------


def read_numbers(path: Path, region: str) -> set[str]:
    """Numbers from a file, one per line or in CSV columns, in any format phonenumbers reads."""
    return scan_numbers(path, region)[0]


def scan_numbers(path: Path, region: str) -> tuple[set[str], list[int]]:
    """The numbers in a file, and the lines holding none (a header of words is not one)."""
    from dialer_cli.leads import normalize

    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the do-not-call list ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: the do-not-call list is not UTF-8 text") from None
    numbers: set[str] = set()
    unusable = []
    for number, line in enumerate(text.splitlines(), start=1):
        cells = [c.strip().strip('"') for c in line.replace(";", ",").split(",")]
        found = {e164 for c in cells if c and (e164 := normalize(c, region)[0])}
        numbers |= found
        header = number == 1 and not any(ch.isdigit() for ch in line)
        if not found and line.strip() and not header:
            unusable.append(number)
    return numbers, unusable


class DncFile:
    """The configured do-not-call file, re-read when it changes so additions apply mid-run."""

    def __init__(self, path: Path | None, region: str):
        self.path, self.region = path, region
        self._mtime: float | None = None
        self.numbers: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        if self.path is None:
            return
        try:
            mtime = self.path.stat().st_mtime
        except OSError as exc:
            raise InputError(
                f"{self.path}: cannot read the do-not-call list ({exc.strerror})"
            ) from None
        if mtime != self._mtime:
            self.numbers, self._mtime = read_numbers(self.path, self.region), mtime

    def __contains__(self, e164: str) -> bool:
        return e164 in self.numbers


# -- pacing ----------------------------------------------------------------------------------


class Pacer:
    """At most `per_second` create requests in any one-second window (fewer than one: spaced)."""

    def __init__(self, per_second: float | None):
        self.per_second = per_second
        self.window = 1.0 if not per_second or per_second >= 1 else 1.0 / per_second
        self.limit = max(1, int(per_second)) if per_second else 0
        self.sent: deque[float] = deque()

    def next_allowed(self, now: float) -> float:
        if not self.limit:
            return now
        while self.sent and self.sent[0] <= now - self.window:
            self.sent.popleft()
        return now if len(self.sent) < self.limit else self.sent[0] + self.window

    def record(self, now: float) -> None:
        if self.limit:
            self.sent.append(now)
