"""Lead sources: what a user sees for each kind of good and bad CSV, and that rows are streamed."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import phonenumbers
import pytest

from dialer_cli import leads
from dialer_cli.errors import LeadsError
from dialer_cli.models import Lead

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, content: str | bytes, name: str = "leads.csv") -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


def read(path: Path, **kwargs: str) -> list[Lead]:
    return list(leads.read_csv(path, **kwargs))


def error_of(path: Path, **kwargs: str) -> str:
    with pytest.raises(LeadsError) as info:
        read(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# -- good files ---------------------------------------------------------------------------------


def test_reads_rows_with_lines_fields_and_e164(tmp_path: Path) -> None:
    path = write(tmp_path, "name,phone\nAda,(415) 555-0142\nBob,+12125550123\n")
    source = leads.read_csv(path)
    assert (source.name, source.columns, source.phone_column) == (
        str(path),
        ["name", "phone"],
        "phone",
    )
    assert list(source) == [
        Lead(2, "(415) 555-0142", "+14155550142", {"name": "Ada", "phone": "(415) 555-0142"}),
        Lead(3, "+12125550123", "+12125550123", {"name": "Bob", "phone": "+12125550123"}),
    ]


def test_key_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    content = b"phone\n+12125550123\n"
    first, second = write(tmp_path, content, "a.csv"), write(tmp_path, content, "b.csv")
    key = "sha256:" + hashlib.sha256(content).hexdigest()
    assert leads.read_csv(first).key == leads.read_csv(second).key == key
    assert leads.read_csv(write(tmp_path, content + b"+12125550124\n", "c.csv")).key != key


def test_source_can_be_iterated_again(tmp_path: Path) -> None:
    source = leads.read_csv(write(tmp_path, "phone\n+12125550123\n"))
    assert list(source) == list(source)


def test_missing_invalid_and_duplicate_numbers_are_skipped_not_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "name,phone\nA,\nB,12\nC,212-555-0101\nD,+1 212 555 0101\nE,abc\n")
    rows = [(lead.line, lead.e164, lead.skip_reason, lead.skip_detail) for lead in read(path)]
    assert rows == [
        (2, None, "missing-number", None),
        (3, None, "invalid-number", "'12' is not a valid number for region US"),
        (4, "+12125550101", None, None),
        (5, None, "duplicate", "+12125550101 is already on line 4"),
        (6, None, "invalid-number", "'abc' is not a phone number"),
    ]


def test_bom_is_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeffphone,name\n+12125550123,Ada\n")
    source = leads.read_csv(path)
    assert source.columns == ["phone", "name"]
    assert [lead.e164 for lead in source] == ["+12125550123"]


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolon_and_tab_delimiters_from_the_header(tmp_path: Path, delimiter: str) -> None:
    path = write(tmp_path, f"name{delimiter}phone\nSmith, Ada{delimiter}212 555 0123\n")
    assert [(lead.name, lead.e164) for lead in read(path)] == [("Smith, Ada", "+12125550123")]


def test_comma_wins_when_semicolons_are_only_inside_quotes(tmp_path: Path) -> None:
    path = write(tmp_path, '"a;b;c",phone\nx,+12125550123\n')
    assert leads.read_csv(path).columns == ["a;b;c", "phone"]


def test_single_column_file(tmp_path: Path) -> None:
    path = write(tmp_path, "phone\n+12125550123\n(415) 555-0142\n")
    assert [lead.e164 for lead in read(path)] == ["+12125550123", "+14155550142"]


def test_phone_column_by_another_name_and_case(tmp_path: Path) -> None:
    source = leads.read_csv(
        write(tmp_path, "name, Mobile \nAda,2125550123\n"), phone_column="mobile"
    )
    assert source.phone_column == "Mobile"
    assert [(lead.phone, lead.e164) for lead in source] == [("2125550123", "+12125550123")]


def test_default_region_for_national_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "phone\n020 7946 0018\n")
    assert [lead.e164 for lead in read(path, default_region="gb")] == ["+442079460018"]


def test_short_rows_are_padded_and_blank_lines_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,name,city\n\n+12125550123\n,,\n+12125550124,Bo\n")
    assert [(lead.line, lead.fields) for lead in read(path)] == [
        (3, {"phone": "+12125550123", "name": "", "city": ""}),
        (5, {"phone": "+12125550124", "name": "Bo", "city": ""}),
    ]


def test_multiline_quoted_field_reports_the_line_where_the_record_starts(tmp_path: Path) -> None:
    content = 'name,phone\n"Ada\nLovelace",+12125550123\r\n"Bob\n\nSmith",+12125550124\nCy,+1212\n'
    rows = [(lead.line, lead.name, lead.skip_reason) for lead in read(write(tmp_path, content))]
    assert rows == [
        (2, "Ada\nLovelace", None),
        (4, "Bob\n\nSmith", None),
        (7, "Cy", "invalid-number"),
    ]


def test_fictional_555_01xx_numbers_are_valid(tmp_path: Path) -> None:
    """phonenumbers (9.x metadata) already calls +1 NXX 555 01XX valid: no special case needed."""
    assert phonenumbers.is_valid_number(phonenumbers.parse("+12125550123"))
    assert leads.normalize("+1 212 555 0123", "US") == ("+12125550123", None, None)


def test_fictional_numbers_are_accepted_even_where_metadata_rejects_them() -> None:
    number = phonenumbers.parse("+19995550100")  # area code 999 is unassigned
    assert not phonenumbers.is_valid_number(number)
    assert leads.normalize("+1 999 555 0100", "US") == ("+19995550100", None, None)
    assert leads.normalize("+1 999 555 0200", "US")[1] == "invalid-number"


def test_numbers_with_a_country_code_ignore_the_region() -> None:
    assert leads.normalize("+44 20 7946 0018", "US") == ("+442079460018", None, None)
    assert leads.normalize("+1234567", "US") == (
        None,
        "invalid-number",
        "'+1234567' is not a valid number",
    )


def test_duplicate_tracking_survives_growth() -> None:
    seen = leads._FirstSeen(bits=2)
    numbers = [12125550000 + i * 7919 for i in range(5000)]
    assert [seen.setdefault(n, line) for line, n in enumerate(numbers, 2)] == list(range(2, 5002))
    assert [seen.setdefault(n, 0) for n in numbers[::997]] == [i + 2 for i in range(0, 5000, 997)]


def test_sample_leads(tmp_path: Path) -> None:
    rows = read(ROOT / "leads.sample.csv")
    reasons = [lead.skip_reason for lead in rows]
    assert len(rows) == 20
    assert reasons.count(None) == 18
    assert reasons.count("duplicate") == 1 and reasons.count("invalid-number") == 1
    assert any(lead.name == "דנה כהן" for lead in rows)
    for lead in rows:
        if lead.e164:
            assert lead.e164[5:10] == "55501", lead  # fictional numbers only


# -- bad files ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    assert error_of(path) == f"{path}: file not found; check the path"


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in error_of(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert error_of(path) == f"{path}: line 1: empty file, expected a header row"
    assert (
        error_of(write(tmp_path, "\n  \n\n"))
        == f"{path}: line 1: empty file, expected a header row"
    )


def test_header_only(tmp_path: Path) -> None:
    path = write(tmp_path, "name,phone\n\n")
    assert error_of(path) == f"{path}: line 1: no leads after the header row; add one row per lead"


def test_no_phone_column(tmp_path: Path) -> None:
    path = write(tmp_path, "name,tel,city\nAda,+12125550123,Paris\n")
    assert error_of(path) == (
        f"{path}: line 1: no 'phone' column (found: name, tel, city); "
        "pass --phone-column with the name of the column holding the numbers"
    )


def test_duplicate_header_names(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,name,Phone\n+12125550123,Ada,x\n")
    assert error_of(path) == (
        f"{path}: line 1: duplicate column names 'phone' and 'Phone'; rename one of them"
    )


def test_unnamed_column(tmp_path: Path) -> None:
    path = write(tmp_path, "phone,,city\n+12125550123,x,y\n")
    assert error_of(path) == f"{path}: line 1: column 2 has no name; name every column"


def test_row_with_more_fields_than_the_header(tmp_path: Path) -> None:
    path = write(tmp_path, "name,phone\nAda,+12125550123\nSmith, Bob,+12125550124\n")
    assert error_of(path) == (
        f"{path}: line 3: 3 fields but the header has 2 columns; "
        "quote values that contain the delimiter"
    )


def test_unterminated_quote_names_the_line_where_the_record_started(tmp_path: Path) -> None:
    path = write(tmp_path, 'name,phone\nAda,+12125550123\n"Bob,+12125550124\nCy,+12125550125\n')
    assert error_of(path) == (
        f"{path}: line 3: a quoted field starts here and is never closed; add the closing quote"
    )


def test_unclosed_quote_in_a_big_file_names_the_line_where_it_opened(tmp_path: Path) -> None:
    rows = "".join(f"P{i},+1212{2000000 + i:07d}\n" for i in range(20_000))
    path = write(tmp_path, f'name,phone\nAda,+12125550123\n"Bob,+12125550124\n{rows}')
    assert error_of(path) == (
        f"{path}: line 3: a field over 131072 characters; check for an unclosed quote"
    )


def test_old_mac_line_endings(tmp_path: Path) -> None:
    path = write(tmp_path, "name,phone\rAda,+12125550123\r")
    assert error_of(path) == (
        f"{path}: line 1: bare carriage return in an unquoted field; "
        "save the file with standard line endings"
    )


def test_stray_quote(tmp_path: Path) -> None:
    path = write(tmp_path, 'name,phone\n"Ada"x,+12125550123\n')
    assert error_of(path).startswith(f"{path}: line 2: malformed CSV (")


def test_bad_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, b"name,phone\nAda,+12125550123\n" + b"Jos\xe9,+12125550124\n")
    assert (
        error_of(path) == f"{path}: line 3: not valid UTF-8 (byte 0xe9); save the file as CSV UTF-8"
    )


def test_bad_utf8_after_a_bom_on_line_one(tmp_path: Path) -> None:
    path = write(tmp_path, b"\xef\xbb\xbfna\xffme,phone\n")
    assert (
        error_of(path) == f"{path}: line 1: not valid UTF-8 (byte 0xff); save the file as CSV UTF-8"
    )


def test_nul_byte(tmp_path: Path) -> None:
    path = write(tmp_path, b"name,phone\nAda,+12125550123\nB\x00b,+12125550124\n")
    assert error_of(path) == (
        f"{path}: line 3: contains a NUL byte; export the data as CSV (UTF-8)"
    )


def test_utf16_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "name,phone\nAda,+12125550123\n".encode("utf-16"))
    assert "line 1:" in error_of(path)


def test_unknown_default_region(tmp_path: Path) -> None:
    path = write(tmp_path, "phone\n+12125550123\n")
    assert "unknown default region 'XX'" in error_of(path, default_region="XX")


def test_bad_header_fails_before_any_row_is_read(tmp_path: Path) -> None:
    """read_csv itself raises, so the caller writes nothing."""
    with pytest.raises(LeadsError):
        leads.read_csv(write(tmp_path, "name\nAda\n"))


def test_file_changed_after_it_was_checked(tmp_path: Path) -> None:
    path = write(tmp_path, "phone\n+12125550123\n")
    source = leads.read_csv(path)
    path.write_text("phone\n+12125550124\n")
    with pytest.raises(LeadsError, match="the file changed while it was being read"):
        list(source)


# -- streaming ----------------------------------------------------------------------------------


def test_rows_are_streamed_not_loaded(tmp_path: Path) -> None:
    """A malformed row at the end is not met by the first rows: nothing reads (or parses) ahead."""
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("name,phone\n")
        f.writelines(f"P{i},+1212{2000000 + i:07d}\n" for i in range(200_000))
        f.write("bad,row,here\n")
    source = leads.read_csv(path)  # checks the header and the first row only
    rows = iter(source)
    assert [next(rows).line, next(rows).line] == [2, 3]


def test_a_csv_file_s_line_count_sizes_the_duplicate_table_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file's lines, counted while it is hashed, size the table of numbers seen: growing it
    would hold the old table and the new one at once (a 1M import's memory peak, 38 MB not 25)."""
    path = tmp_path / "leads.csv"
    numbers = [f"+1212734{i:04d}" for i in range(3000)]
    path.write_text(
        "name,phone\n" + "".join(f"L{i},{n}\n" for i, n in enumerate(numbers + numbers[:5]))
    )
    source = leads.read_csv(path)
    assert source.rows_hint == 3006
    monkeypatch.setattr(leads._FirstSeen, "_grow", lambda self: pytest.fail("the table grew"))
    read_back = list(source)
    assert sum(1 for lead in read_back if lead.e164) == 3000
    assert [lead.skip_detail for lead in read_back[3000:]] == [
        f"{n} is already on line {line}" for line, n in enumerate(numbers[:5], 2)
    ]


def test_the_north_american_fast_path_agrees_with_phonenumbers() -> None:
    """20,000 random +1 numbers, valid or not, in the ways people write them: the fast path
    gives what phonenumbers' parse + is_valid_number gives, or leaves the number to it."""
    rng = random.Random(13)
    for _ in range(20_000):
        d = f"{rng.randint(100, 999)}{rng.randint(0, 9_999_999):07d}"
        written = rng.choice(
            [f"+1{d}", d, f"1{d}", f"({d[:3]}) {d[3:6]}-{d[6:]}", f"{d[:3]}.{d[3:6]}.{d[6:]}"]
        )
        fast = leads._nanp_e164(written, "US")
        slow = leads._normalize_slowly.__wrapped__(written, "US")[0]
        fictional = slow is not None and leads._FICTIONAL_NANP.fullmatch(slow[2:])
        assert fast == slow or (fast is None and fictional), (written, fast, slow)
