"""Regenerate tests/twilio_calls_spec.json from Twilio's full 2010 API spec (by hand, not pytest).

    python tests/trim_spec.py ../shared/twilio/twilio_api_v2010.json

The full spec is 1.9 MB; the tests need only the Calls endpoints, the account fetch (for `doctor`)
and the IncomingPhoneNumbers list, plus every component schema those reference. Kept operations
are copied verbatim, so the trimmed file is still Twilio's text (MIT, see TWILIO_SPEC_LICENSE).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SOURCE_PATH = "spec/json/twilio_api_v2010.json"
SOURCE_COMMIT = "d50069b44ea8cd23141385bdb6db48f16ff75bb5"
KEEP: dict[str, tuple[str, ...] | None] = {  # path -> methods to keep (None: every operation)
    "/2010-04-01/Accounts/{AccountSid}/Calls.json": None,
    "/2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json": None,
    "/2010-04-01/Accounts/{Sid}.json": ("get",),
    "/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json": ("get",),
}
METHODS = {"get", "post", "put", "delete", "patch"}
REF_PREFIX = "#/components/schemas/"


def _refs(node: Any) -> set[str]:
    """Schema names referenced anywhere below `node`."""
    if isinstance(node, dict):
        found = (
            {node["$ref"][len(REF_PREFIX) :]}
            if str(node.get("$ref", "")).startswith(REF_PREFIX)
            else set()
        )
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


def trim(spec: dict[str, Any]) -> dict[str, Any]:
    """Keep the chosen operations and the transitive closure of the schemas they reference."""
    paths: dict[str, Any] = {}
    for path, methods in KEEP.items():
        item = spec["paths"][path]
        paths[path] = {
            k: v for k, v in item.items() if k not in METHODS or methods is None or k in methods
        }
    schemas = spec["components"]["schemas"]
    wanted, todo = set(), _refs(paths)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo |= _refs(schemas[name])
    tags = {
        t
        for item in paths.values()
        for k, op in item.items()
        if k in METHODS
        for t in op.get("tags", [])
    }
    return {
        "openapi": spec["openapi"],
        "info": {
            **spec["info"],
            "x-trimmed-from": f"twilio/twilio-oai {SOURCE_PATH} @ {SOURCE_COMMIT}",
        },
        "servers": spec.get("servers", []),
        "security": spec.get("security", []),
        "tags": [t for t in spec.get("tags", []) if t.get("name") in tags],
        "paths": paths,
        "components": {
            "securitySchemes": spec["components"]["securitySchemes"],
            "schemas": {name: schemas[name] for name in sorted(wanted)},
        },
    }


def main(argv: list[str]) -> None:
    source = Path(argv[1] if len(argv) > 1 else "../shared/twilio/twilio_api_v2010.json")
    out = Path(__file__).with_name("twilio_calls_spec.json")
    trimmed = trim(json.loads(source.read_text(encoding="utf-8")))
    out.write_text(json.dumps(trimmed, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    count = len(trimmed["components"]["schemas"])
    print(f"wrote {out} ({out.stat().st_size:,} bytes, {count} schemas)")


if __name__ == "__main__":
    main(sys.argv)
