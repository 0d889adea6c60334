"""Contract checks against Twilio's own OpenAPI description (tests/twilio_calls_spec.json).

The simulator is the tests' referee, so something has to referee the simulator: every request a test
sends and every 2xx body the simulator returns is checked against the spec Twilio publishes, never
against our own idea of it. Read only from tests/ (see TWILIO_SPEC_LICENSE); regenerate with
tests/trim_spec.py.

Deliberately stricter than the spec in two places, both of which only ever catch our own mistakes:
unknown request parameters are reported (Twilio silently ignores a misspelt `Pagesize`), and
response objects may not carry properties the schema does not list.
"""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema

SPEC: dict[str, Any] = json.loads(
    Path(__file__).with_name("twilio_calls_spec.json").read_text(encoding="utf-8")
)
FORM = "application/x-www-form-urlencoded"
E164 = re.compile(r"\+[1-9]\d{1,14}")
DATE_OR_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?")


def _template(path: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", path)  # literal, name, literal, name, ...
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]*)" for i, p in enumerate(parts))
    return re.compile(regex)


PATHS = [(_template(path), path, item) for path, item in SPEC["paths"].items()]


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 -> JSON Schema: `nullable` becomes a null alternative; listed properties only."""
    if isinstance(node, list):
        return [_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_jsonschema(v) for k, v in node.items() if k != "nullable"}
    if "properties" in node and isinstance(node["properties"], dict):
        out.setdefault("additionalProperties", False)
    return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") is True else out


COMPONENTS = _to_jsonschema(SPEC["components"])
FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("date-time-rfc-2822", raises=(TypeError, ValueError))
def _is_rfc2822(value: object) -> bool:
    return not isinstance(value, str) or parsedate_to_datetime(value) is not None


@FORMATS.checks("uri")
def _is_uri_reference(value: object) -> bool:
    """Twilio's page URIs are relative ("/2010-04-01/..."), so accept a path or an absolute URL."""
    return not isinstance(value, str) or value.startswith("/") or _is_absolute_url(value)


def _is_absolute_url(value: str) -> bool:
    parts = urlsplit(value)
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parts.scheme)) and (
        parts.scheme not in ("http", "https") or bool(parts.netloc)
    )


def _match(method: str, path: str) -> tuple[str, dict[str, Any], dict[str, str]] | str:
    """(template, operation, path parameters), or a violation message."""
    for regex, template, item in PATHS:
        if m := regex.fullmatch(path):
            op = item.get(method.lower())
            if op is None:
                return f"{method} {template}: the spec has no such operation"
            return template, op, m.groupdict()
    return f"{path}: matches no path of the spec"


def _check_value(name: str, value: str, schema: dict[str, Any]) -> list[str]:
    """One string-encoded value (a query or form field) against its declared schema."""
    schema = _resolve(schema)
    kind, fmt, bad = schema.get("type", "string"), schema.get("format"), f"{name}={value!r}"
    if kind == "integer":
        if not re.fullmatch(r"-?\d+", value):
            return [f"{bad}: not an integer"]
        n = int(value)
        if n < schema.get("minimum", n) or n > schema.get("maximum", n):
            return [f"{bad}: outside {schema.get('minimum')}..{schema.get('maximum')}"]
        return []
    if kind == "number":
        return [] if re.fullmatch(r"-?\d+(\.\d+)?", value) else [f"{bad}: not a number"]
    if kind == "boolean":
        return [] if value.lower() in ("true", "false") else [f"{bad}: not a boolean"]
    problems = []
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{bad}: not one of {schema['enum']}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        problems.append(f"{bad}: does not match {schema['pattern']}")
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        problems.append(
            f"{bad}: length outside {schema.get('minLength')}..{schema.get('maxLength')}"
        )
    if fmt == "uri" and not _is_absolute_url(value):
        problems.append(f"{bad}: not an absolute URI")
    if fmt == "date-time" and not DATE_OR_TIME.fullmatch(value):
        problems.append(f"{bad}: not a date or ISO 8601 time")
    if fmt == "phone-number" and not E164.fullmatch(value):
        problems.append(f"{bad}: not an E.164 phone number")
    return problems


def validate_request(method: str, path: str, params: dict[str, list[str]]) -> list[str]:
    """Violations of the spec by one request (form body or query, repeated keys as lists)."""
    found = _match(method, path)
    if isinstance(found, str):
        return [found]
    template, op, path_values = found
    problems: list[str] = []
    declared = op.get("parameters", [])
    for p in declared:
        if p["in"] == "path":
            problems += _check_value(p["name"], path_values[p["name"]], p["schema"])
    body = op.get("requestBody", {}).get("content", {}).get(FORM, {}).get("schema")
    if body is not None:
        fields, required = _resolve(body).get("properties", {}), _resolve(body).get("required", [])
    else:
        fields = {p["name"]: p["schema"] for p in declared if p["in"] == "query"}
        required = [p["name"] for p in declared if p["in"] == "query" and p.get("required")]
    problems += [
        f"{name}: required by {op['operationId']}" for name in required if not params.get(name)
    ]
    for name, values in params.items():
        if name not in fields:
            problems.append(f"{name}: not a parameter of {op['operationId']} ({template})")
            continue
        schema = _resolve(fields[name])
        if schema.get("type") == "array":
            problems += [v for value in values for v in _check_value(name, value, schema["items"])]
            continue
        if len(values) != 1:
            problems.append(f"{name}: given {len(values)} times")
        problems += [v for value in values for v in _check_value(name, value, schema)]
    return problems


def validate_response(
    method: str, path: str, status: int, body: dict[str, Any] | None
) -> list[str]:
    """Violations by one response: 2xx bodies against the operation's schema, errors against
    Twilio's error shape (which the spec does not describe)."""
    found = _match(method, path)
    if not 200 <= status < 300:
        return _check_error(status, body)
    if isinstance(found, str):
        return [found]
    _, op, _ = found
    response = op["responses"].get(str(status))
    if response is None:
        declared = sorted(op["responses"])
        return [f"{op['operationId']}: the spec declares no {status} response ({declared})"]
    schema = response.get("content", {}).get("application/json", {}).get("schema")
    if schema is None:
        return [] if not body else [f"{op['operationId']} {status}: expected no body"]
    root = {**_to_jsonschema(schema), "components": COMPONENTS}
    validator = jsonschema.Draft202012Validator(root, format_checker=FORMATS)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<body>'}: {e.message}"
        for e in validator.iter_errors(body)
    ]


def _check_error(status: int, body: dict[str, Any] | None) -> list[str]:
    if not isinstance(body, dict):
        return [f"{status}: error body is not a JSON object"]
    problems = [f"error body: {k} is not {t.__name__}" for k, t in
                (("code", int), ("message", str), ("more_info", str), ("status", int))
                if not isinstance(body.get(k), t)]  # fmt: skip
    if body.get("status") != status:
        problems.append(f"error body: status {body.get('status')} != HTTP {status}")
    if body.get("more_info") != f"https://www.twilio.com/docs/errors/{body.get('code')}":
        problems.append(f"error body: more_info {body.get('more_info')!r} does not name the code")
    return problems
