"""Settings: one resolver for flag > environment > campaign > file > default, with each source.

`load_settings` reads only the config file and the `env` mapping it is handed (never `os.environ`),
so the CLI and the tests resolve settings the same way. It never requires credentials: commands that
do not talk to Twilio must work without them; those that do call `require_credentials`.
Each key's default and rule sit together on its dataclass field, so there is one list of keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs

from dialer_cli.errors import ConfigError

Check = Callable[[Any], Any]  # returns the value as stored, or raises _Invalid


class _Invalid(Exception):
    """A value's problem worded as "expected X, got Y"; the caller adds where it came from."""


def _show(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else repr(value)


def _rule(what: str, test: Callable[[Any], bool], convert: Check = lambda v: v) -> Check:
    def check(value: Any) -> Any:
        if not test(value):
            raise _Invalid(f"expected {what}, got {_show(value)}")
        return convert(value)

    return check


def _is_number(value: Any, whole: bool = False) -> bool:
    """bool is an int to Python, never to a user; an int is fine where a float is wanted."""
    kinds = int if whole else int | float
    return isinstance(value, kinds) and not isinstance(value, bool)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    hint = "; put it in quotes (YAML reads +1415... as a number)" if _is_number(value) else ""
    raise _Invalid(f"expected text, got {_show(value)}{hint}")


def _secret(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected text in quotes (the value is not shown)")
    return value


def _list_of(item: Check, what: str, empty_ok: bool = True) -> Check:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or (not value and not empty_ok):
            raise _Invalid(f"expected a list of {what}, got {_show(value)}")
        for entry in value:
            try:
                item(entry)
            except _Invalid:
                raise _Invalid(f"expected a list of {what}, got {_show(entry)} in it") from None
        return tuple(value)

    return check


def _zone(value: Any) -> str:
    try:
        ZoneInfo(_text(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise _Invalid(f"expected a zone such as 'America/New_York', got {_show(value)}") from None
    return value


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _whole(low: int, high: int | None = None) -> Check:
    what = f"a whole number ≥ {low}" if high is None else f"a whole number from {low} to {high}"
    return _rule(what, lambda v: _is_number(v, whole=True) and low <= v <= (high or v))


def _over(low: float, inclusive: bool = False) -> Check:
    what = f"a number {'≥' if inclusive else '>'} {low:g}"
    return _rule(what, lambda v: _is_number(v) and (v >= low if inclusive else v > low), float)


def _one_of(*options: str) -> Check:
    return _rule("one of " + ", ".join(options), lambda v: v in options)


def _key(default: Any, check: Check, **kwargs: Any) -> Any:
    return field(default=default, metadata={"check": check}, **kwargs)


_E164 = re.compile(r"\+[1-9]\d{6,14}")
E164_EXAMPLE = "'+14155550100'"


def _e164(value: Any) -> str:
    """Checked on load, whatever the command: `from_number: hello` is wrong under --simulate too."""
    if not _E164.fullmatch(_text(value)):
        raise _Invalid(f"expected an E.164 number such as {E164_EXAMPLE}, got {_show(value)}")
    return str(value)


_HOST = re.compile(r"[A-Za-z0-9._~%:-]+")  # a name, an IPv4 or (unbracketed) IPv6 address


def _usable_url(value: Any) -> bool:
    """http(s), a host made of host characters, a non-zero port if any: a URL that can ever
    answer. Anything else would be retried for ever instead of failing here in one line."""
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:  # a port that is not a number
        return False
    host = parts.hostname or ""
    return parts.scheme in ("http", "https") and bool(_HOST.fullmatch(host)) and port != 0


_URL = _rule("an http:// or https:// URL with a host", _usable_url)
_HOURS = re.compile(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d")
_RETRY_ON = _one_of("busy", "no-answer", "failed", "machine")  # machine: AMD said so
_DAY = _one_of("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_COLUMN = _rule("a column name", lambda v: isinstance(v, str) and bool(v.strip()))


@functools.cache
def _regions() -> frozenset[str]:
    from phonenumbers import SUPPORTED_REGIONS

    return frozenset(SUPPORTED_REGIONS)


_REGION = _rule("a region such as 'US'", lambda v: str(v).upper() in _regions(), str.upper)
_CLOCK = _rule("'HH:MM-HH:MM'", lambda v: isinstance(v, str) and bool(_HOURS.fullmatch(v)))
_PATH = _optional(lambda v: v if isinstance(v, Path) else Path(_text(v)).expanduser())


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str | None = _key(None, _optional(_text))
    auth_token: str | None = _key(None, _optional(_secret), repr=False)
    from_number: str | None = _key(None, _optional(_e164))
    from_numbers: tuple[str, ...] = _key((), _list_of(_e164, "E.164 numbers in quotes"))
    base_url: str = _key("https://api.twilio.com", _URL)
    http_timeout: float = _key(10.0, _over(0))
    give_up_after: float = _key(300.0, _over(0))  # s with no answer at all: the run fails


@dataclass(frozen=True)
class CallSettings:
    twiml: str | None = _key(None, _optional(_text))
    url: str | None = _key(None, _optional(_URL))
    timeout: int | None = _key(30, _optional(_whole(1, 600)))  # ring time, Twilio's limit
    time_limit: int | None = _key(None, _optional(_whole(1)))
    record: bool | None = _key(
        None, _optional(_rule("true or false", lambda v: isinstance(v, bool)))
    )
    machine_detection: str | None = _key(None, _optional(_one_of("Enable", "DetectMessageEnd")))
    # What an answering machine hears instead (voicemail.py); needs machine_detection.
    machine_twiml: str | None = _key(None, _optional(_text))
    machine_url: str | None = _key(None, _optional(_URL))


@dataclass(frozen=True)
class DialingSettings:
    concurrency: int = _key(3, _whole(1))
    poll_interval: float = _key(2.0, _over(0))
    reconcile_grace: float = _key(30.0, _over(0))  # 0 would prove "no call" in one instant
    max_attempts: int = _key(1, _whole(1))
    retry_on: tuple[str, ...] = _key(
        ("busy", "no-answer"), _list_of(_RETRY_ON, "busy, no-answer, failed, machine")
    )
    retry_delay: float = _key(900.0, _over(0, inclusive=True))
    calling_hours: str | None = _key(None, _optional(_CLOCK))
    calling_days: tuple[str, ...] | None = _key(
        None, _optional(_list_of(_DAY, "mon, tue, wed, thu, fri, sat, sun", empty_ok=False))
    )
    timezone: str | None = _key(None, _optional(_zone))
    do_not_call: Path | None = _key(None, _PATH)  # relative to the config file when set there
    calls_per_second: float | None = _key(None, _optional(_over(0)))
    recall_after: float | None = _key(None, _optional(_over(0, inclusive=True)))  # seconds


@dataclass(frozen=True)
class LeadsSettings:
    phone_column: str = _key("phone", _COLUMN)
    default_region: str = _key("US", _REGION)


@dataclass(frozen=True)
class CampaignSettings:
    name: str
    source: str
    query: str | None = None
    table: str | None = None
    writeback: str | None = None  # SQL run once per lead that reached a final state
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)  # has secrets


@dataclass(frozen=True)
class Settings:
    twilio: TwilioSettings = TwilioSettings()
    call: CallSettings = CallSettings()
    dialing: DialingSettings = DialingSettings()
    leads: LeadsSettings = LeadsSettings()
    campaigns: dict[str, CampaignSettings] = field(default_factory=dict)
    path: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)


_SECTIONS: dict[str, Any] = {
    "twilio": TwilioSettings,
    "call": CallSettings,
    "dialing": DialingSettings,
    "leads": LeadsSettings,
}
_CHECKS: dict[str, dict[str, Check]] = {
    name: {f.name: f.metadata["check"] for f in dataclasses.fields(cls)}
    for name, cls in _SECTIONS.items()
}
_ENV = {"TWILIO_ACCOUNT_SID": "twilio.account_sid", "TWILIO_AUTH_TOKEN": "twilio.auth_token"}
_PAIRS = (("call.twiml", "call.url"), ("call.machine_twiml", "call.machine_url"))
_EXCLUSIVE = {k: o for a, b in _PAIRS for k, o in ((a, b), (b, a))}  # the higher layer's wins


def default_config_path() -> Path:
    return platformdirs.user_config_path("dialer") / "config.yaml"


def default_db_path() -> Path:
    return platformdirs.user_data_path("dialer") / "dialer.db"


def load_settings(
    config_path: Path | None,
    env: Mapping[str, str],
    overrides: Mapping[str, object] | None = None,
    campaign: str | None = None,
) -> Settings:
    """Resolve every setting, highest first: flags, environment, campaign, file, defaults."""
    path = _choose_file(config_path)
    data = _read_yaml(path) if path else {}
    where, base = str(path), path.parent if path else None
    campaigns = _campaigns(data.get("campaigns"), where, base)
    values = {
        f"{s}.{f.name}": f.default for s, c in _SECTIONS.items() for f in dataclasses.fields(c)
    }
    sources = dict.fromkeys(values, "default")
    _apply(values, sources, _sections(data, where, "", ("campaigns",)), where, f"file {path}", base)
    if campaign is not None:
        if campaign not in campaigns:
            known = ", ".join(campaigns) or "none"
            file = path or default_config_path()
            raise ConfigError(f"{file}: unknown campaign {campaign!r}; known campaigns: {known}")
        flat = {
            f"{s}.{k}": v for s, b in campaigns[campaign].overrides.items() for k, v in b.items()
        }
        source = f"file {path} (campaign {campaign})"
        _apply(values, sources, flat, where, source, base, f"campaigns.{campaign}.")
    for var, key in _ENV.items():
        if env.get(var):
            _apply(values, sources, {key: env[var]}, var, f"env {var}")
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(f"{_flag(key)}: unknown setting {key!r}")
        if value is not None:
            _apply(values, sources, {key: value}, _flag(key), "flag")
    built = {
        name: cls(**{f.name: values[f"{name}.{f.name}"] for f in dataclasses.fields(cls)})
        for name, cls in _SECTIONS.items()
    }
    settings = Settings(**built, campaigns=campaigns, path=path, sources=sources)
    _check_amd(settings)
    return settings


def _check_amd(settings: Settings) -> None:
    """A machine message or `retry_on: machine` without AMD would never apply: say so now."""
    call, dialing = settings.call, settings.dialing
    if call.machine_detection:
        return
    if call.machine_twiml or call.machine_url:
        key = "call.machine_twiml" if call.machine_twiml else "call.machine_url"
        raise ConfigError(
            f"{_origin(settings, key)}: {key} needs call.machine_detection "
            f"(DetectMessageEnd, to leave the message after the greeting, or Enable)"
        )
    if "machine" in dialing.retry_on:
        raise ConfigError(
            f"{_origin(settings, 'dialing.retry_on')}: dialing.retry_on: machine needs "
            f"call.machine_detection (DetectMessageEnd or Enable)"
        )


def require_credentials(settings: Settings) -> None:
    """Fail in one line, before any call, naming each missing key and where it can be set."""
    twilio = settings.twilio
    wanted = {"twilio.account_sid": twilio.account_sid, "twilio.auth_token": twilio.auth_token}
    wanted["twilio.from_number"] = twilio.from_number or (twilio.from_numbers or None)
    missing = [key for key, value in wanted.items() if not value]
    if missing:
        file = settings.path or default_config_path()
        envs = [var for var, key in _ENV.items() if key in missing]
        how = f"set {' and '.join(envs)} or " if envs else "set "
        raise ConfigError(f"missing {', '.join(missing)}; {how}{' and '.join(missing)} in {file}")
    if not re.fullmatch(r"AC[0-9a-fA-F]{32}", twilio.account_sid or ""):
        raise ConfigError(
            f"{_origin(settings, 'twilio.account_sid')}: twilio.account_sid: expected 'AC' and 32 "
            f"hex digits, got {twilio.account_sid!r}; copy it from the Twilio console"
        )
    key = "twilio.from_numbers" if twilio.from_numbers else "twilio.from_number"
    for number in (twilio.from_number, *twilio.from_numbers):
        if number is not None and not re.fullmatch(r"\+[1-9]\d{6,14}", number):
            raise ConfigError(
                f"{_origin(settings, key)}: {key}: expected an E.164 number such as "
                f"'+14155550100', got {number!r}"
            )


def require_message(settings: Settings) -> None:
    """A real call must say something the user chose: no built-in test message to real people."""
    if not settings.call.twiml and not settings.call.url:
        file = settings.path or default_config_path()
        raise ConfigError(
            f"missing call.twiml or call.url (what the called person hears); set one in {file}"
        )


TWILIO_DEFAULT_CONCURRENCY = 5  # the most any account allows before its limits are raised
TWILIO_DEFAULT_CPS = 1  # creates per second; Twilio queues the rest


def concurrency_warning(n: int) -> str | None:
    """N above a Twilio account's default limits: say what will happen instead of N calls."""
    if n <= TWILIO_DEFAULT_CONCURRENCY:
        return None
    return (
        f"warning: concurrency {n} is above what a Twilio account allows by default "
        f"({TWILIO_DEFAULT_CONCURRENCY} calls at once, {TWILIO_DEFAULT_CPS} new call a second: "
        f"Twilio queues the creates and refuses calls over the limit with error 10004); "
        f"lower dialing.concurrency unless your account's limits were raised"
    )


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, value, source) rows for `config show`; the auth token is only ever "(set)"."""
    rows = []
    for name, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            key, value = f"{name}.{f.name}", getattr(getattr(settings, name), f.name)
            if key == "twilio.auth_token":
                value = "(set)" if value else None
            rows.append((key, _display(value), settings.sources.get(key, "default")))
    for c in settings.campaigns.values():
        rows.append((f"campaigns.{c.name}.source", c.source, f"file {settings.path}"))
        if c.writeback:
            rows.append((f"campaigns.{c.name}.writeback", c.writeback, f"file {settings.path}"))
    return rows


def _display(value: object) -> str:
    if value is None:
        return "(not set)"
    if isinstance(value, tuple):
        return ", ".join(value) or "(none)"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _origin(settings: Settings, key: str) -> str:
    """Name what the user edits: the file, the variable or the flag."""
    source = settings.sources.get(key, "default")
    if source.startswith(("file ", "env ")):
        return source.split(" ", 1)[1]
    return _flag(key)


def _flag(key: str) -> str:
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def _choose_file(config_path: Path | None) -> Path | None:
    if config_path is None:
        default = default_config_path()
        return default if default.is_file() else None
    if not config_path.is_file():
        what = "is a directory" if config_path.is_dir() else "config file not found"
        raise ConfigError(f"{config_path}: {what}; check --config or DIALER_CONFIG")
    return config_path


@functools.cache
def _loader() -> type:
    """A SafeLoader that rejects duplicate keys: the stock one keeps the last one silently,
    hiding a typo. Built on first use, so commands that read no config never import yaml."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[tuple[str, str]] = set()
            for key_node, _ in node.value:  # keys as written; `<<` merges may be overridden
                if isinstance(key_node, yaml.ScalarNode) and not key_node.tag.endswith(":merge"):
                    if (key_node.tag, key_node.value) in seen:
                        problem = f"duplicate key {key_node.value!r}"
                        raise yaml.constructor.ConstructorError(
                            None, None, problem, key_node.start_mark
                        )
                    seen.add((key_node.tag, key_node.value))
            return super().construct_mapping(node, deep=deep)

    return Loader


def _read_yaml(path: Path) -> dict[Any, Any]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror}); check its permissions") from None
    if not raw.strip():
        raise ConfigError(
            f"{path}: the file is empty; add settings (see config.example.yaml) or remove it"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8; save the file as UTF-8") from None
    import yaml

    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or "unreadable"
        # never str(e): its snippet of the file could show the auth token
        raise ConfigError(f"{path}: {at}invalid YAML ({problem}); fix the file there") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected sections such as 'dialing:', not a list or value")
    return data or {}


def _sections(
    data: Mapping[Any, Any], where: str, label: str, extra: tuple[str, ...]
) -> dict[str, object]:
    """Flatten {section: {key: value}} to {"section.key": value}, rejecting unknown names."""
    flat: dict[str, object] = {}
    for name, body in data.items():
        if name in extra:
            continue
        if name not in _CHECKS:
            raise _unknown(where, label, name, [*_CHECKS, *extra])
        for key, value in _as_mapping(body, where, f"{label}{name}").items():
            if key not in _CHECKS[name]:
                raise _unknown(where, f"{label}{name}.", key, list(_CHECKS[name]))
            flat[f"{name}.{key}"] = value
    return flat


def _unknown(where: str, label: str, key: object, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean '{label}{close[0]}'?" if close else "known keys: " + ", ".join(known)
    return ConfigError(f"{where}: {label}{key}: unknown key; {hint}")


def _as_mapping(value: object, where: str, dotted: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else "a single value"
        raise ConfigError(f"{where}: {dotted}: expected indented 'key: value' lines, got {kind}")
    return value


def _campaigns(body: object, where: str, base: Path | None) -> dict[str, CampaignSettings]:
    """Check every campaign now, used or not: a typo in one is a typo in the file."""
    result = {}
    for name, raw in _as_mapping(body, where, "campaigns").items():
        label = f"campaigns.{name}."
        spec = _as_mapping(raw, where, label.rstrip("."))
        flat = _sections(spec, where, label, ("source", "query", "table", "writeback"))
        _apply({}, {}, flat, where, "", base, label)
        source = _checked(_text, spec.get("source", ""), where, label + "source")
        if not source.strip():
            raise ConfigError(f"{where}: {label}source: missing; set a CSV path or a database URL")
        query = _checked(_optional(_text), spec.get("query"), where, label + "query")
        table = _checked(_optional(_text), spec.get("table"), where, label + "table")
        if query and table:
            raise ConfigError(f"{where}: {label}query and table are both set; keep one")
        writeback = _checked(_optional(_text), spec.get("writeback"), where, label + "writeback")
        sections = {s: dict(_as_mapping(spec[s], where, s)) for s in _CHECKS if s in spec}
        result[str(name)] = CampaignSettings(str(name), source, query, table, writeback, sections)
    return result


def _checked(check: Check, value: object, origin: str, key: str) -> Any:
    try:
        return check(value)
    except _Invalid as e:
        raise ConfigError(f"{origin}: {key}: {e}") from None


def _apply(
    values: dict[str, object],
    sources: dict[str, str],
    layer: Mapping[str, object],
    origin: str,
    source: str,
    base: Path | None = None,
    label: str = "",
) -> None:
    """Check one layer's values (naming `origin` on error) and lay them over the lower layers."""
    for a, b in _PAIRS:
        if layer.get(a) is not None and layer.get(b) is not None:
            raise ConfigError(f"{origin}: {label}{a} and {label}{b} are both set; keep one")
    for key, raw in layer.items():
        section, name = key.split(".")
        value = _checked(_CHECKS[section][name], raw, origin, label + key)
        if isinstance(value, Path) and base is not None and not value.is_absolute():
            value = base / value  # relative to the config file, not to wherever dialer runs
        values[key], sources[key] = value, source
        other = _EXCLUSIVE.get(key)
        if other is not None and value is not None and values.get(other) is not None:
            values[other], sources[other] = None, source  # this layer's choice unset a lower one
