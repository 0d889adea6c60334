"""Settings: one resolver for flag > environment > campaign > file > default, remembering each source.

`load_settings` reads only the config file and the `env` mapping it is handed (never `os.environ`),
so the CLI and the tests resolve settings the same way. It never requires credentials: commands that
do not talk to Twilio must work without them; those that do call `require_credentials`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import platformdirs
import yaml
from phonenumbers import SUPPORTED_REGIONS

from dialer_cli.errors import ConfigError


@dataclass(frozen=True)
class TwilioSettings:
    account_sid: str | None = None
    auth_token: str | None = field(default=None, repr=False)
    from_number: str | None = None
    from_numbers: tuple[str, ...] = ()
    base_url: str = "https://api.twilio.com"
    http_timeout: float = 10.0


@dataclass(frozen=True)
class CallSettings:
    twiml: str | None = None
    url: str | None = None
    timeout: int | None = 30
    time_limit: int | None = None
    record: bool | None = None
    machine_detection: str | None = None


@dataclass(frozen=True)
class DialingSettings:
    concurrency: int = 3
    poll_interval: float = 2.0
    reconcile_grace: float = 30.0
    max_attempts: int = 1
    retry_on: tuple[str, ...] = ("busy", "no-answer")
    retry_delay: float = 900.0
    calling_hours: str | None = None
    calling_days: tuple[str, ...] | None = None
    timezone: str | None = None
    do_not_call: Path | None = None
    calls_per_second: float | None = None
    recall_after: float | None = None  # seconds


@dataclass(frozen=True)
class LeadsSettings:
    phone_column: str = "phone"
    default_region: str = "US"


@dataclass(frozen=True)
class CampaignSettings:
    name: str
    source: str
    query: str | None = None
    table: str | None = None
    overrides: dict[str, dict[str, object]] = field(
        default_factory=dict, repr=False
    )  # may hold a token


@dataclass(frozen=True)
class Settings:
    twilio: TwilioSettings = TwilioSettings()
    call: CallSettings = CallSettings()
    dialing: DialingSettings = DialingSettings()
    leads: LeadsSettings = LeadsSettings()
    campaigns: dict[str, CampaignSettings] = field(default_factory=dict)
    path: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)


def default_config_path() -> Path:
    return platformdirs.user_config_path("dialer") / "config.yaml"


def default_db_path() -> Path:
    return platformdirs.user_data_path("dialer") / "dialer.db"


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


def _is_int(value: Any) -> bool:  # bool is an int to Python, never to a user
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    hint = "; put it in quotes (YAML reads +1415... as a number)" if _is_number(value) else ""
    raise _Invalid(f"expected text, got {_show(value)}{hint}")


def _secret(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected text in quotes (the value is not shown)")
    return value


def _list_of(item: Check, what: str) -> Check:
    def check(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise _Invalid(f"expected a list of {what}, got {_show(value)}")
        try:
            return tuple(item(entry) for entry in value)
        except _Invalid as e:
            raise _Invalid(f"expected a list of {what}; {e}") from None

    return check


def _zone(value: Any) -> str:
    try:
        ZoneInfo(_text(value))
    except (ZoneInfoNotFoundError, ValueError):
        raise _Invalid(f"expected a zone such as 'America/New_York', got {_show(value)}") from None
    return value


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _whole(low: int, high: int = 1 << 62) -> Check:
    what = f"a whole number ≥ {low}" if high == 1 << 62 else f"a whole number {low}-{high}"
    return _rule(what, lambda v: _is_int(v) and low <= v <= high)


def _over(low: float, inclusive: bool = False) -> Check:
    what = f"a number {'≥' if inclusive else '>'} {low:g}"
    return _rule(what, lambda v: _is_number(v) and (v >= low if inclusive else v > low), float)


def _one_of(*options: str) -> Check:
    return _rule("one of " + ", ".join(options), lambda v: v in options)


_HOURS = re.compile(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SCHEMA: dict[str, dict[str, Check]] = {
    "twilio": {
        "account_sid": _optional(_text),
        "auth_token": _optional(_secret),
        "from_number": _optional(_text),
        "from_numbers": _list_of(_text, "phone numbers"),
        "base_url": _rule("an http:// or https:// URL", lambda v: str(v).startswith("http")),
        "http_timeout": _over(0),
    },
    "call": {
        "twiml": _optional(_text),
        "url": _optional(_rule("an http:// or https:// URL", lambda v: str(v).startswith("http"))),
        "timeout": _optional(_whole(1, 600)),
        "time_limit": _optional(_whole(1)),
        "record": _optional(_rule("true or false", lambda v: isinstance(v, bool))),
        "machine_detection": _optional(_one_of("Enable", "DetectMessageEnd")),
    },
    "dialing": {
        "concurrency": _whole(1),
        "poll_interval": _over(0),
        "reconcile_grace": _over(0, inclusive=True),
        "max_attempts": _whole(1),
        "retry_on": _list_of(_one_of("busy", "no-answer", "failed"), "call outcomes"),
        "retry_delay": _over(0, inclusive=True),
        "calling_hours": _optional(
            _rule("'HH:MM-HH:MM'", lambda v: isinstance(v, str) and bool(_HOURS.fullmatch(v)))
        ),
        "calling_days": _optional(_list_of(_one_of(*_DAYS), "days")),
        "timezone": _optional(_zone),
        "do_not_call": _optional(lambda v: Path(v if isinstance(v, Path) else _text(v))),
        "calls_per_second": _optional(_over(0)),
        "recall_after": _optional(_over(0, inclusive=True)),
    },
    "leads": {
        "phone_column": _rule("a column name", lambda v: isinstance(v, str) and bool(v.strip())),
        "default_region": _rule(
            "a region such as 'US' or 'GB'",
            lambda v: str(v).upper() in SUPPORTED_REGIONS,
            str.upper,
        ),
    },
}
_CLASSES: dict[str, type] = {
    "twilio": TwilioSettings,
    "call": CallSettings,
    "dialing": DialingSettings,
    "leads": LeadsSettings,
}
_ENV = {"TWILIO_ACCOUNT_SID": "twilio.account_sid", "TWILIO_AUTH_TOKEN": "twilio.auth_token"}
_EXCLUSIVE = {"call.twiml": "call.url", "call.url": "call.twiml"}  # the higher layer's choice wins
_CAMPAIGN_KEYS = ("source", "query", "table")


class _Loader(yaml.SafeLoader):
    """Rejects duplicate keys: the stock loader keeps the last one silently, hiding a typo."""


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)  # type: ignore[no-untyped-call]
        if isinstance(key, str) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key if isinstance(key, str) else id(key_node))
    return loader.construct_mapping(node)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


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
    values = _defaults()
    sources = dict.fromkeys(values, "default")
    _apply(values, sources, _sections(data, where, "", ("campaigns",)), where, f"file {path}", base)
    if campaign is not None:
        chosen = _pick(campaigns, campaign, path)
        flat = {f"{s}.{k}": v for s, body in chosen.overrides.items() for k, v in body.items()}
        label, source = f"campaigns.{campaign}.", f"file {path} (campaign {campaign})"
        _apply(values, sources, flat, where, source, base, label)
    for var, key in _ENV.items():
        if env.get(var):
            _apply(values, sources, {key: env[var]}, var, f"env {var}")
    for key, value in (overrides or {}).items():
        if key not in values:
            raise ConfigError(f"{_flag(key)}: unknown setting {key!r}")
        if value is not None:
            _apply(values, sources, {key: value}, _flag(key), "flag")
    return Settings(**_build(values), campaigns=campaigns, path=path, sources=sources)


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
        origin = _origin(settings, "twilio.account_sid")
        raise ConfigError(
            f"{origin}: twilio.account_sid: expected 'AC' and 32 hex digits, got "
            f"{twilio.account_sid!r}; copy it from the Twilio console"
        )
    key = "twilio.from_numbers" if twilio.from_numbers else "twilio.from_number"
    for number in (twilio.from_number, *twilio.from_numbers):
        if number is not None and not re.fullmatch(r"\+[1-9]\d{6,14}", number):
            raise ConfigError(
                f"{_origin(settings, key)}: {key}: expected an E.164 number such as "
                f"'+14155550100', got {number!r}"
            )


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, value, source) rows for `config show`; the auth token is only ever "(set)"."""
    rows = []
    for name, cls in _CLASSES.items():
        for f in dataclasses.fields(cls):
            key, value = f"{name}.{f.name}", getattr(getattr(settings, name), f.name)
            shown = (
                ("(set)" if value else "(not set)")
                if key == "twilio.auth_token"
                else _display(value)
            )
            rows.append((key, shown, settings.sources.get(key, "default")))
    for c in settings.campaigns.values():
        rows.append((f"campaigns.{c.name}.source", c.source, f"file {settings.path}"))
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
    if source.startswith("file "):
        return source.removeprefix("file ")
    return source.removeprefix("env ") if source.startswith("env ") else _flag(key)


def _flag(key: str) -> str:
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def _defaults() -> dict[str, object]:
    return {
        f"{name}.{f.name}": getattr(cls(), f.name)
        for name, cls in _CLASSES.items()
        for f in dataclasses.fields(cls)
    }


def _build(values: Mapping[str, object]) -> dict[str, object]:
    return {
        name: cls(**{f.name: values[f"{name}.{f.name}"] for f in dataclasses.fields(cls)})
        for name, cls in _CLASSES.items()
    }


def _choose_file(config_path: Path | None) -> Path | None:
    if config_path is None:
        default = default_config_path()
        return default if default.is_file() else None
    if not config_path.is_file():
        what = "is a directory" if config_path.is_dir() else "config file not found"
        raise ConfigError(f"{config_path}: {what}; check --config or DIALER_CONFIG")
    return config_path


def _read_yaml(path: Path) -> dict[object, object]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = e.object[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8; save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or "unreadable"
        raise ConfigError(f"{path}: {at}invalid YAML ({problem}); check indentation and quoting")
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected sections such as 'dialing:' at the top level")
    return data or {}


def _sections(data: Mapping[object, object], where: str, label: str, extra: tuple[str, ...]):
    """Flatten {section: {key: value}} to {"section.key": value}, rejecting unknown names."""
    flat: dict[str, object] = {}
    for name, body in data.items():
        if name in extra:
            continue
        if name not in _SCHEMA:
            raise _unknown(where, label, name, [*_SCHEMA, *extra])
        for key, value in _as_mapping(body, where, f"{label}{name}").items():
            if key not in _SCHEMA[name]:  # type: ignore[index]
                raise _unknown(where, f"{label}{name}.", key, list(_SCHEMA[name]))  # type: ignore[index]
            flat[f"{name}.{key}"] = value
    return flat


def _unknown(where: str, label: str, key: object, known: list[str]) -> ConfigError:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean '{label}{close[0]}'?" if close else "known keys: " + ", ".join(known)
    return ConfigError(f"{where}: {label}{key}: unknown key; {hint}")


def _as_mapping(value: object, where: str, dotted: str) -> dict[object, object]:
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
        _apply({}, {}, _sections(spec, where, label, _CAMPAIGN_KEYS), where, "", base, label)
        source = _checked(_text, spec.get("source", ""), where, label + "source")
        if not source:
            raise ConfigError(f"{where}: {label}source: missing; set a CSV path or a database URL")
        query = _checked(_optional(_text), spec.get("query"), where, label + "query")
        table = _checked(_optional(_text), spec.get("table"), where, label + "table")
        if query and table:
            raise ConfigError(f"{where}: {label}query and table are both set; keep one")
        sections = {s: dict(_as_mapping(spec[s], where, s)) for s in _SCHEMA if s in spec}
        result[str(name)] = CampaignSettings(str(name), source, query, table, sections)  # type: ignore[arg-type]
    return result


def _pick(
    campaigns: Mapping[str, CampaignSettings], name: str, path: Path | None
) -> CampaignSettings:
    if name in campaigns:
        return campaigns[name]
    known = ", ".join(campaigns) or "none"
    raise ConfigError(f"{path or default_config_path()}: unknown campaign {name!r}; known: {known}")


def _checked(check: Callable[[object], object], value: object, origin: str, key: str) -> object:
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
    if all(layer.get(key) is not None for key in _EXCLUSIVE):
        raise ConfigError(f"{origin}: {label}call.twiml and {label}call.url are both set; keep one")
    for key, raw in layer.items():
        value = _checked(_SCHEMA[key.split(".")[0]][key.split(".")[1]], raw, origin, label + key)
        if isinstance(value, Path) and base is not None and not value.is_absolute():
            value = base / value  # relative to the config file, not to wherever dialer runs
        values[key], sources[key] = value, source
        if key in _EXCLUSIVE and value is not None:
            values[_EXCLUSIVE[key]], sources[_EXCLUSIVE[key]] = None, source
