"""Lead sources: a CSV file today, a database query later, both seen as a stream of `models.Lead`.

A source is checked eagerly (header, phone column, at least one row) so a bad file fails before the
dialer writes anything, then streamed row by row so a million-row file costs no more memory than a
small one. Every problem is a one-line `LeadsError` naming the file and the physical line.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import itertools
import re
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import phonenumbers

from dialer_cli import models
from dialer_cli.errors import LeadsError

if TYPE_CHECKING:
    from _csv import Reader

Record = tuple[int, dict[str, str]]  # (line or row number, every column of the row)

_E164 = re.compile(r"\+[1-9]\d{6,14}")
_FICTIONAL_NANP = re.compile(r"[2-9]\d\d55501\d\d")  # NXX-555-0100 ... NXX-555-0199
_DELIMITERS = (",", ";", "\t")  # comma first: it wins ties
_QUOTED = re.compile(r'"[^"]*"')
_CHUNK = 1 << 20
_CHANGED = "{path}: the file changed while it was being read; run the command again"


@dataclass(frozen=True)
class LeadSource:
    """A checked source of leads; iterate it (as often as needed) to stream `models.Lead`.

    `records` is the seam for other kinds of source: anything that yields (line, fields) pairs gets
    the same normalisation and duplicate detection as a CSV file.
    """

    name: str
    key: str
    columns: list[str]
    phone_column: str
    records: Callable[[], Iterator[Record]] = field(repr=False, compare=False)
    default_region: str = "US"
    rows_hint: int = field(default=0, compare=False)  # about how many rows, if known

    def __iter__(self) -> Iterator[models.Lead]:
        return to_leads(self.records(), self.phone_column, self.default_region, self.rows_hint)


def read_csv(path: Path, *, phone_column: str = "phone", default_region: str = "US") -> LeadSource:
    """Check a CSV file's header and first row now; its rows are read only when iterated."""
    region = _check_region(path, default_region)
    digest, newlines = _digest(path)
    key = "sha256:" + digest
    with _open(path) as f:
        lines = _text_lines(f, path)
        first = _first_line(lines, path)
        delimiter = _sniff(first)
        reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter, strict=True)
        columns = _header(reader, path)
        phone = find_phone_column(columns, phone_column, f"{path}: line 1")
        if next(_records(reader, columns, path), None) is None:
            raise LeadsError(f"{path}: line 1: no leads after the header row; add one row per lead")
    return LeadSource(
        name=str(path),
        key=key,
        columns=columns,
        phone_column=phone,
        records=functools.partial(_csv_records, path, delimiter, columns, key),
        default_region=region,
        rows_hint=newlines,
    )


def to_leads(
    records: Iterable[Record], phone_column: str, region: str, rows_hint: int = 0
) -> Iterator[models.Lead]:
    """Turn raw rows into leads, skipping (not dropping) rows that must not be dialled."""
    first_seen = _FirstSeen.sized(rows_hint).setdefault  # a million calls: bound once
    lead = models.Lead
    for line, fields in records:
        phone = fields.get(phone_column, "")
        e164, reason, detail = normalize(phone, region)
        if e164 is not None:
            first = first_seen(int(e164[1:]), line)
            if first != line:
                reason, detail = "duplicate", f"{e164} is already on line {first}"
                e164 = None
        yield lead(line, phone, e164, fields, reason, detail)


def normalize(phone: str, region: str) -> tuple[str | None, str | None, str | None]:
    """Return (e164, skip_reason, detail) for a number as written.

    North American numbers (most leads) take a fast path: separators stripped, ten digits
    checked against phonenumbers' own +1 patterns in one regex, about 40x cheaper than parse +
    is_valid_number; anything it does not recognise goes the full way.

    Fictional NANP numbers (NXX-555-0100 to 0199) are accepted even if phonenumbers' metadata ever
    stops calling them valid: the sample leads, demos and tests use them so that they reach nobody.
    """
    raw = phone.strip()
    fast = _nanp_e164(raw, region) if raw else None
    if fast is not None:
        return fast, None, None
    return _normalize_slowly(raw, region)


@functools.lru_cache(maxsize=8192)
def _normalize_slowly(raw: str, region: str) -> tuple[str | None, str | None, str | None]:
    """The full way, cached: it pays off on files that repeat an odd number (`n/a`, a
    switchboard); bounded, so a big import stays small. The fast path is cheaper uncached."""
    if not raw:
        return None, "missing-number", None
    international = _E164.fullmatch(raw) is not None
    try:
        number = phonenumbers.parse(raw, None if international else region)
    except phonenumbers.NumberParseException:
        return None, "invalid-number", f"{raw!r} is not a phone number"
    if not (phonenumbers.is_valid_number(number) or _is_fictional(number)):
        where = "" if raw.startswith("+") else f" for region {region}"
        return None, "invalid-number", f"{raw!r} is not a valid number{where}"
    if international:
        return raw, None, None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), None, None


_SEPARATORS = re.compile(r"[\s().\-]")


def _nanp_e164(raw: str, region: str) -> str | None:
    """The E.164 form of a valid North American number written plainly, else None."""
    pattern, regions = _nanp()
    digits = raw if raw[1:].isdigit() else _SEPARATORS.sub("", raw)
    if digits.startswith("+1"):  # most leads: +1NNNNNNNNNN, already in E.164 if valid
        national = digits[2:]
        valid = len(national) == 10 and national.isdigit() and pattern.fullmatch(national)
        return digits if valid else None
    if region not in regions or digits.startswith("+"):
        return None
    national = digits[1:] if len(digits) == 11 and digits[0] == "1" else digits
    if len(national) == 10 and national.isdigit() and pattern.fullmatch(national):
        return "+1" + national
    return None


@functools.cache
def _nanp() -> tuple[re.Pattern[str], frozenset[str]]:
    """One regex for every valid number of country code 1, built from phonenumbers' metadata
    (the patterns is_valid_number checks), and the regions that dial it."""
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE[1]
    patterns = set()
    for region in regions:
        meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
        for desc in (
            meta.fixed_line, meta.mobile, meta.toll_free, meta.premium_rate, meta.shared_cost,
            meta.personal_number, meta.voip, meta.pager, meta.uan, meta.voicemail,
        ):  # fmt: skip
            if desc is not None and desc.national_number_pattern:
                patterns.add(desc.national_number_pattern)
    joined = "|".join(f"(?:{p})" for p in sorted(patterns))
    return re.compile(joined), frozenset(regions)


def _is_fictional(number: phonenumbers.PhoneNumber) -> bool:
    national = str(number.national_number)
    return (
        number.country_code == 1
        and _FICTIONAL_NANP.fullmatch(national) is not None
        and phonenumbers.is_possible_number(number)
    )


class _FirstSeen:
    """E.164 number -> first line, in two flat arrays with open addressing.

    A dict of ints costs ~116 bytes an entry (~120 MB for a million numbers); this costs 24 to
    48, so a million-row import stays well under its memory budget. 0 marks a free slot.
    """

    def __init__(self, bits: int = 10) -> None:
        self._allocate(bits)

    @classmethod
    def sized(cls, count: int) -> _FirstSeen:
        """Room for `count` numbers at once: growing to it would hold the old table and the
        new one together (a 1M-lead import's memory peak: 38 MB, not 25) and rehash in Python."""
        return cls(max(10, (2 * count).bit_length()))

    def _allocate(self, bits: int) -> None:
        self._bits = bits
        self._mask, self._shift = (1 << bits) - 1, 64 - bits
        self._keys = array("Q", [0]) * (1 << bits)  # no zeroed bytes copied in: half the peak
        self._lines = array("I", [0]) * (1 << bits)
        self._count = 0

    def setdefault(self, number: int, line: int) -> int:
        """Return the line the number was first seen on, recording `line` if it is new."""
        keys, mask = self._keys, self._mask
        slot = ((number * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> self._shift
        while found := keys[slot]:
            if found == number:
                return self._lines[slot]
            slot = (slot + 1) & mask
        keys[slot] = number
        self._lines[slot] = line
        self._count += 1
        if self._count * 2 > len(keys):
            self._grow()
        return line

    def _grow(self) -> None:
        old_keys, old_lines = self._keys, self._lines
        self._allocate(self._bits + 1)
        keys, lines, mask, shift = self._keys, self._lines, self._mask, self._shift
        for number, line in zip(old_keys, old_lines, strict=True):
            if number:
                slot = ((number * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> shift
                while keys[slot]:
                    slot = (slot + 1) & mask
                keys[slot], lines[slot] = number, line
                self._count += 1


def _check_region(path: Path, region: str) -> str:
    if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise LeadsError(
            f"{path}: unknown default region {region!r}; "
            "use a two-letter country code such as US or GB"
        )
    return region.upper()


def _open(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise LeadsError(f"{path}: file not found; check the path") from None
    except IsADirectoryError:
        raise LeadsError(f"{path}: is a directory, expected a CSV file") from None
    except OSError as e:
        raise LeadsError(
            f"{path}: cannot read ({e.strerror}); check the file's permissions"
        ) from None


def _digest(path: Path) -> tuple[str, int]:
    """Identify the content, so the same file given twice (under any name) is the same source;
    and count its lines on the way (at most one lead each)."""
    hasher, lines = hashlib.sha256(), 0
    with _open(path) as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
            lines += chunk.count(b"\n")
    return hasher.hexdigest(), lines


def _text_lines(f: BinaryIO, path: Path, key: str | None = None) -> Iterator[str]:
    """Decode line by line (not in big chunks) so an encoding error names its own line.

    With `key`, also check at the end that the bytes read are the ones the key was computed from.
    """
    hasher = hashlib.sha256()
    for number, raw in enumerate(f, 1):
        hasher.update(raw)
        if b"\x00" in raw:
            raise LeadsError(
                f"{path}: line {number}: contains a NUL byte; export the data as CSV (UTF-8)"
            )
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise LeadsError(
                f"{path}: line {number}: not valid UTF-8 (byte 0x{e.object[e.start]:02x}); "
                "save the file as CSV UTF-8"
            ) from None
        yield text
    if key is not None and "sha256:" + hasher.hexdigest() != key:
        raise LeadsError(_CHANGED.format(path=path))


def _first_line(lines: Iterator[str], path: Path) -> str:
    first = next(lines, "")
    if not first.strip():
        if all(not line.strip() for line in lines):
            raise LeadsError(f"{path}: line 1: empty file, expected a header row")
        raise LeadsError(f"{path}: line 1: blank, expected a header row; remove the blank lines")
    return first


def _sniff(header: str) -> str:
    """Pick the delimiter the header uses most, ignoring quoted names; a lone column means comma."""
    bare = _QUOTED.sub("", header)
    best = max(_DELIMITERS, key=bare.count)
    return best if bare.count(best) else ","


def _header(reader: Reader, path: Path) -> list[str]:
    try:
        columns = [name.strip() for name in next(reader)]
    except csv.Error as e:
        raise LeadsError(f"{path}: line 1: {_csv_problem(e)}") from None
    for index, name in enumerate(columns, 1):
        if not name:
            raise LeadsError(f"{path}: line 1: column {index} has no name; name every column")
    return unique_columns(columns, f"{path}: line 1", "rename one of them")


def unique_columns(columns: list[str], where: str, fix: str) -> list[str]:
    """Columns become dict keys (and the phone column is matched ignoring case): two with one
    name would silently lose one."""
    seen: dict[str, str] = {}
    for name in columns:
        if name.casefold() in seen:
            raise LeadsError(
                f"{where}: duplicate column names {seen[name.casefold()]!r} and {name!r}; {fix}"
            )
        seen[name.casefold()] = name
    return columns


def find_phone_column(columns: list[str], wanted: str, where: str) -> str:
    """The column named `wanted`, ignoring case and surrounding spaces."""
    for name in columns:
        if name.casefold() == wanted.strip().casefold():
            return name
    raise LeadsError(
        f"{where}: no {wanted!r} column (found: {', '.join(columns)}); "
        "pass --phone-column with the name of the column holding the numbers"
    )


def _csv_records(path: Path, delimiter: str, columns: list[str], key: str) -> Iterator[Record]:
    """Every record of the file, parsed in C from a buffered text stream (four times faster
    than decoding line by line). A NUL byte or invalid UTF-8 anywhere sends the whole read
    down the line-by-line path again, which names the line of the first problem, whatever
    its kind, exactly as if it had read that way from the start."""
    done = 0
    try:
        with _open(path) as f:
            raw = _Hashed(f)
            text = io.TextIOWrapper(
                io.BufferedReader(raw, _CHUNK), encoding="utf-8-sig", newline="\n"
            )
            reader = csv.reader(text, delimiter=delimiter, strict=True)
            next(reader, None)  # the header, already checked
            for record in _records(reader, columns, path):
                yield record
                done += 1
            if "sha256:" + raw.hasher.hexdigest() != key:
                raise LeadsError(_CHANGED.format(path=path))
    except (UnicodeDecodeError, _NulByte):
        yield from itertools.islice(_line_by_line(path, delimiter, columns, key), done, None)


def _line_by_line(path: Path, delimiter: str, columns: list[str], key: str) -> Iterator[Record]:
    with _open(path) as f:
        reader = csv.reader(_text_lines(f, path, key), delimiter=delimiter, strict=True)
        next(reader, None)
        yield from _records(reader, columns, path)


class _NulByte(Exception):
    """A NUL byte was read: the line-by-line path finds its line."""


class _Hashed(io.RawIOBase):
    """The file's bytes, hashed as they are read (the file must not change after its key was
    computed) and refused at the first NUL byte (a binary file, not CSV)."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.hasher = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._f.read(len(buffer))
        if b"\x00" in chunk:
            raise _NulByte
        self.hasher.update(chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _records(reader: Reader, columns: list[str], path: Path) -> Iterator[Record]:
    """Yield (line where the record starts, fields), skipping blank rows. The common row (as
    wide as the header, its first field filled) takes one test: this runs a million times."""
    width = len(columns)
    line = reader.line_num + 1  # where the next record starts
    try:
        for row in reader:
            start, line = line, reader.line_num + 1
            if len(row) != width or not row[0].strip():
                if not "".join(row).strip():
                    continue  # a blank row
                if len(row) > width:
                    raise LeadsError(
                        f"{path}: line {start}: {len(row)} fields but the header has {width} "
                        "columns; quote values that contain the delimiter"
                    )
                row.extend([""] * (width - len(row)))
            yield start, dict(zip(columns, row, strict=False))  # equal lengths by now
    except csv.Error as e:
        raise LeadsError(f"{path}: line {line}: {_csv_problem(e)}") from None


def _csv_problem(e: csv.Error) -> str:
    text = str(e)
    if text == "unexpected end of data":
        return "a quoted field starts here and is never closed; add the closing quote"
    if "field larger than field limit" in text:
        return f"a field over {csv.field_size_limit()} characters; check for an unclosed quote"
    if text.startswith("new-line character seen in unquoted field"):
        return "bare carriage return in an unquoted field; save the file with standard line endings"
    return f"malformed CSV ({text}); check the quoting on this line"
