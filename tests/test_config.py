"""Settings: precedence with sources, one-line errors naming file and key, a token kept secret."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dialer_cli import config
from dialer_cli.config import load_settings
from dialer_cli.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SID = "AC" + "0123456789abcdef" * 2
TOKEN = "s3cr3t-t0ken-4242"


def write(tmp_path: Path, text: str, name: str = "dialer.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(path: Path | None, env: dict[str, str] | None = None, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env or {}, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message
    return message


CREDENTIALS = f"""
twilio:
  account_sid: {SID}
  auth_token: {TOKEN}
  from_number: "+14155550100"
"""


# -- defaults and paths -------------------------------------------------------------------------


def test_no_file_gives_defaults_and_no_credentials_needed() -> None:
    settings = load_settings(None, {})
    assert settings.path is None
    assert settings.dialing.concurrency == 3
    assert settings.dialing.retry_on == ("busy", "no-answer")
    assert settings.call.timeout == 30
    assert settings.leads == config.LeadsSettings("phone", "US")
    assert set(settings.sources.values()) == {"default"}


def test_default_paths_follow_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert config.default_config_path() == tmp_path / "cfg" / "dialer" / "config.yaml"
    assert config.default_db_path() == tmp_path / "data" / "dialer" / "dialer.db"


def test_default_config_file_is_used_when_present(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    path = config.default_config_path()
    path.parent.mkdir(parents=True)
    path.write_text("dialing: {concurrency: 9}\n")
    settings = load_settings(None, {})
    assert (settings.path, settings.dialing.concurrency) == (path, 9)


def test_missing_explicit_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert error_of(path) == f"{path}: config file not found; check --config or DIALER_CONFIG"


def test_example_config_loads() -> None:
    settings = load_settings(ROOT / "config.example.yaml", {})
    assert settings.twilio.from_number == "+14155550100"
    crm = settings.campaigns["crm"]
    assert crm.source == "sqlite:///crm.db" and crm.query and "SELECT" in crm.query
    chosen = load_settings(ROOT / "config.example.yaml", {}, campaign="crm")
    assert chosen.dialing.concurrency == 2
    assert (chosen.call.url, chosen.call.twiml) == ("https://example.com/crm-greeting.xml", None)


def test_example_config_names_every_key() -> None:
    text = (ROOT / "config.example.yaml").read_text()
    for key, _, _ in config.describe(config.Settings()):
        assert f"  {key.split('.')[-1]}:" in text, key


# -- precedence ---------------------------------------------------------------------------------


def test_precedence_flag_env_campaign_file_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        twilio: {account_sid: ACfile, auth_token: file-token}
        dialing: {concurrency: 4, poll_interval: 5, max_attempts: 2}
        leads: {phone_column: tel}
        campaigns:
          spring:
            source: spring.csv
            twilio: {account_sid: ACcampaign}
            dialing: {concurrency: 6, poll_interval: 7}
        """,
    )
    env = {"TWILIO_ACCOUNT_SID": "ACenv", "TWILIO_AUTH_TOKEN": ""}  # empty means unset
    s = load_settings(path, env, {"dialing.concurrency": 8, "leads.phone_column": None}, "spring")
    assert s.dialing.concurrency == 8  # flag beats everything
    assert s.twilio.account_sid == "ACenv"  # env beats campaign and file
    assert s.dialing.poll_interval == 7.0  # campaign beats file
    assert s.dialing.max_attempts == 2  # file beats default
    assert s.leads.phone_column == "tel"  # a None override is a flag not given
    assert s.twilio.auth_token == "file-token"
    assert s.dialing.retry_delay == 900.0
    assert s.sources["dialing.concurrency"] == "flag"
    assert s.sources["twilio.account_sid"] == "env TWILIO_ACCOUNT_SID"
    assert s.sources["dialing.poll_interval"] == f"file {path} (campaign spring)"
    assert s.sources["dialing.max_attempts"] == f"file {path}"
    assert s.sources["dialing.retry_delay"] == "default"


def test_campaign_not_chosen_changes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "campaigns: {a: {source: a.csv, dialing: {concurrency: 6}}}\n")
    settings = load_settings(path, {})
    assert settings.dialing.concurrency == 3
    campaign = settings.campaigns["a"]
    assert (campaign.name, campaign.source, campaign.query, campaign.table) == (
        "a",
        "a.csv",
        None,
        None,
    )
    assert campaign.overrides == {"dialing": {"concurrency": 6}}


def test_unknown_campaign_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "campaigns: {a: {source: a.csv}, b: {source: b.csv}}\n")
    assert error_of(path, campaign="c") == f"{path}: unknown campaign 'c'; known campaigns: a, b"


def test_twiml_and_url_a_higher_layer_replaces_the_other(tmp_path: Path) -> None:
    path = write(tmp_path, "call: {twiml: <Response/>}\n")
    settings = load_settings(path, {}, {"call.url": "https://example.com/t.xml"})
    assert (settings.call.twiml, settings.call.url) == (None, "https://example.com/t.xml")
    assert settings.sources["call.twiml"] == "flag"


def test_do_not_call_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "dialing: {do_not_call: lists/dnc.csv}\n")
    assert load_settings(path, {}).dialing.do_not_call == tmp_path / "lists" / "dnc.csv"
    flagged = load_settings(path, {}, {"dialing.do_not_call": Path("x.csv")})
    assert flagged.dialing.do_not_call == Path("x.csv")


def test_ints_are_accepted_for_floats_and_region_is_upper_cased(tmp_path: Path) -> None:
    path = write(
        tmp_path, "dialing: {poll_interval: 1, retry_delay: 0}\nleads: {default_region: gb}"
    )
    settings = load_settings(path, {})
    assert settings.dialing.poll_interval == 1.0 and isinstance(
        settings.dialing.poll_interval, float
    )
    assert settings.leads.default_region == "GB"


def test_load_settings_reads_only_the_env_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "ACfromosenviron")
    assert load_settings(None, {}).twilio.account_sid is None


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "dialing: {concurency: 4}",
            "dialing.concurency: unknown key; did you mean 'dialing.concurrency'?",
        ),
        ("dialling: {concurrency: 4}", "dialling: unknown key; did you mean 'dialing'?"),
        ("leads: {zzz: 1}", "leads.zzz: unknown key; known keys: phone_column, default_region"),
        (
            "campaigns: {crm: {source: x.csv, dialing: {retry_of: [busy]}}}",
            "campaigns.crm.dialing.retry_of: unknown key; "
            "did you mean 'campaigns.crm.dialing.retry_on'?",
        ),
        (
            "campaigns: {crm: {sorce: x.csv}}",
            "campaigns.crm.sorce: unknown key; did you mean 'campaigns.crm.source'?",
        ),
    ],
)
def test_unknown_keys(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "dialing: {concurrency: three}",
            "dialing.concurrency: expected a whole number ≥ 1, got 'three'",
        ),
        (
            "dialing: {concurrency: true}",
            "dialing.concurrency: expected a whole number ≥ 1, got true",
        ),
        ("dialing: {concurrency: 0}", "dialing.concurrency: expected a whole number ≥ 1, got 0"),
        (
            "dialing: {concurrency: 2.5}",
            "dialing.concurrency: expected a whole number ≥ 1, got 2.5",
        ),
        (
            "dialing: {concurrency: null}",
            "dialing.concurrency: expected a whole number ≥ 1, got null",
        ),
        ("dialing: {poll_interval: 0}", "dialing.poll_interval: expected a number > 0, got 0"),
        (
            "dialing: {reconcile_grace: -1}",
            "dialing.reconcile_grace: expected a number > 0, got -1",
        ),
        ("dialing: {max_attempts: 0}", "dialing.max_attempts: expected a whole number ≥ 1, got 0"),
        ("twilio: {http_timeout: 0}", "twilio.http_timeout: expected a number > 0, got 0"),
        (
            "dialing: {retry_on: [busy, nope]}",
            "dialing.retry_on: expected a list of busy, no-answer, failed, machine, "
            "got 'nope' in it",
        ),
        (
            "dialing: {retry_on: busy}",
            "dialing.retry_on: expected a list of busy, no-answer, failed, machine, got 'busy'",
        ),
        (
            "dialing: {calling_hours: '9-17'}",
            "dialing.calling_hours: expected 'HH:MM-HH:MM', got '9-17'",
        ),
        (
            "dialing: {calling_hours: '09:00-24:00'}",
            "dialing.calling_hours: expected 'HH:MM-HH:MM', got '09:00-24:00'",
        ),
        (
            "dialing: {calling_days: [mon, funday]}",
            "dialing.calling_days: expected a list of mon, tue, wed, thu, fri, sat, sun, "
            "got 'funday' in it",
        ),
        (
            "dialing: {timezone: Mars/Olympus}",
            "dialing.timezone: expected a zone such as 'America/New_York', got 'Mars/Olympus'",
        ),
        (
            "leads: {default_region: XX}",
            "leads.default_region: expected a region such as 'US', got 'XX'",
        ),
        (
            "call: {machine_detection: yes}",
            "call.machine_detection: expected one of Enable, DetectMessageEnd, got true",
        ),
        ("call: {record: 'yes'}", "call.record: expected true or false, got 'yes'"),
        ("call: {timeout: 601}", "call.timeout: expected a whole number from 1 to 600, got 601"),
        (
            "call: {twiml: <Response/>, url: 'https://x'}",
            "call.twiml and call.url are both set; keep one",
        ),
        (
            "twilio: {base_url: 'ftp://x'}",
            "twilio.base_url: expected an http:// or https:// URL with a host, got 'ftp://x'",
        ),
        (
            "twilio: {from_number: +14155550100}",
            "twilio.from_number: expected text, got 14155550100; "
            "put it in quotes (YAML reads +1415... as a number)",
        ),
        ("twilio: [a, b]", "twilio: expected indented 'key: value' lines, got a list"),
        (
            "campaigns: {crm: {query: select 1}}",
            "campaigns.crm.source: missing; set a CSV path or a database URL",
        ),
        (
            "campaigns: {crm: {source: x.db, query: q, table: t}}",
            "campaigns.crm.query and table are both set; keep one",
        ),
        (
            "campaigns: {crm: {source: x.db, call: {timeout: 0}}}",
            "campaigns.crm.call.timeout: expected a whole number from 1 to 600, got 0",
        ),
        ("- just\n- a list\n", "expected sections such as 'dialing:', not a list or value"),
    ],
)
def test_wrong_values(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert error_of(path) == f"{path}: {expected}"


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "dialing:\n  concurrency: 3\n  poll_interval: [1,\n")
    assert error_of(path).startswith(f"{path}: line 4: invalid YAML (")


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "dialing:\n  concurrency: 3\n  concurrency: 4\n")
    assert (
        error_of(path)
        == f"{path}: line 3: invalid YAML (duplicate key 'concurrency'); fix the file there"
    )


def test_yaml_anchors_and_merges_still_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        dialing: &slow {concurrency: 1, poll_interval: 5}
        campaigns:
          night: {source: n.csv, dialing: {<<: *slow, concurrency: 2}}
        """,
    )
    settings = load_settings(path, {}, campaign="night")
    assert (settings.dialing.concurrency, settings.dialing.poll_interval) == (2, 5.0)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "dialer.yaml"
    path.write_bytes(b"leads:\n  phone_column: t\xe9l\n")
    assert error_of(path) == f"{path}: line 2: not valid UTF-8; save the file as UTF-8"


def test_empty_file_is_fine(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing yet\n"), {}).dialing.concurrency == 3


def test_bad_values_from_flags_name_the_flag(tmp_path: Path) -> None:
    assert error_of(None, overrides={"dialing.concurrency": 0}) == (
        "--concurrency: dialing.concurrency: expected a whole number ≥ 1, got 0"
    )
    assert error_of(None, overrides={"leads.phone_column": " "}) == (
        "--phone-column: leads.phone_column: expected a column name, got ' '"
    )


# -- credentials and secrecy --------------------------------------------------------------------


def test_credentials_complete(tmp_path: Path) -> None:
    config.require_credentials(load_settings(write(tmp_path, CREDENTIALS), {}))


def test_credentials_missing_name_the_keys_and_where_to_set_them(tmp_path: Path) -> None:
    default = config.default_config_path()
    with pytest.raises(ConfigError) as info:
        config.require_credentials(load_settings(None, {}))
    assert str(info.value) == (
        "missing twilio.account_sid, twilio.auth_token, twilio.from_number; "
        "set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN or twilio.account_sid and "
        f"twilio.auth_token and twilio.from_number in {default}"
    )
    path = write(tmp_path, f"twilio: {{account_sid: {SID}, from_numbers: ['+14155550100']}}\n")
    with pytest.raises(ConfigError) as info:
        config.require_credentials(load_settings(path, {}))
    assert str(info.value) == (
        f"missing twilio.auth_token; set TWILIO_AUTH_TOKEN or twilio.auth_token in {path}"
    )


def test_credentials_malformed(tmp_path: Path) -> None:
    path = write(tmp_path, CREDENTIALS)
    with pytest.raises(ConfigError) as info:
        config.require_credentials(load_settings(path, {"TWILIO_ACCOUNT_SID": "AC123"}))
    assert str(info.value) == (
        "TWILIO_ACCOUNT_SID: twilio.account_sid: expected 'AC' and 32 hex digits, got 'AC123'; "
        "copy it from the Twilio console"
    )
    path = write(tmp_path, CREDENTIALS.replace('"+14155550100"', '"415-555-0100"'))
    with pytest.raises(ConfigError) as info:
        config.require_credentials(load_settings(path, {}))
    assert str(info.value) == (
        f"{path}: twilio.from_number: expected an E.164 number such as '+14155550100', "
        "got '415-555-0100'"
    )


def test_token_never_shown(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        CREDENTIALS + f"campaigns: {{c: {{source: x.csv, twilio: {{auth_token: {TOKEN}}}}}}}\n",
    )
    settings = load_settings(path, {}, campaign="c")
    assert settings.twilio.auth_token == TOKEN
    shown = [str(settings), repr(settings), repr(settings.twilio), repr(settings.campaigns)]
    shown.append(repr(config.describe(settings)))
    assert not any(TOKEN in text or TOKEN[-4:] in text for text in shown)
    rows = {key: (value, source) for key, value, source in config.describe(settings)}
    assert rows["twilio.auth_token"] == ("(set)", f"file {path} (campaign c)")
    assert rows["dialing.concurrency"] == ("3", "default")
    assert config.describe(load_settings(None, {}))[1] == (
        "twilio.auth_token",
        "(not set)",
        "default",
    )


def test_token_not_echoed_in_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "twilio: {auth_token: 424242424242}\n")
    message = error_of(path)
    assert "4242" not in message
    assert message == f"{path}: twilio.auth_token: expected text in quotes (the value is not shown)"
    path = write(tmp_path, f"twilio:\n  auth_token: {TOKEN}\n   bad: [\n")
    assert TOKEN not in error_of(path)


def test_calling_days_must_name_at_least_one_day(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dialing:\n  calling_days: []\n")
    with pytest.raises(ConfigError, match=r"dialing\.calling_days: expected a list of mon"):
        load_settings(path, {})
