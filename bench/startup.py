"""Start-up: `dialer --help` and `dialer status RUN --json` (small database) against
`sqlite-utils --help`, and which heavy packages each command imports.

    python bench/startup.py [--quick] [--reps R]

Whole-process wall time, median of R (default 10; quick 5) runs, the commands interleaved.
Target: each within 1.5x of `sqlite-utils --help`, and neither imports twilio or phonenumbers.
The slowest imports of each (python -X importtime, cumulative) are listed for diagnosis.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BIN,
    PY,
    clean_env,
    e164_numbers,
    header,
    make_leads,
    median,
    note,
    scratch,
    timed,
    verdict,
)

HEAVY = ("twilio", "phonenumbers", "requests", "rich", "yaml", "pydantic", "sqlite_utils")
PROBE = """
import sys
sys.argv = ["dialer", *sys.argv[1:]]
from dialer_cli.cli import main
try:
    main()
except SystemExit:
    pass
loaded = [m for m in {heavy!r} if m in sys.modules]
print("LOADED:" + ",".join(loaded))
"""


def small_db(path: Path) -> int:
    from dialer_cli.store import Store

    store = Store.open(path)
    run_id = store.create_run(
        source="leads.csv",
        source_key="sha256:small",
        leads=make_leads(e164_numbers(20)),
        target="simulated",
        base_url=None,
        from_number="+15005550006",
        concurrency=3,
        settings={},
        now=time.time(),
    )
    store.close()
    return run_id


def slowest_imports(args: list[str], env: dict[str, str], top: int = 8) -> list[str]:
    t = timed([PY, "-X", "importtime", "-m", "dialer_cli", *args], env)
    rows = []
    for line in t.out.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit():
                rows.append((int(cumulative), name.rstrip()))
    rows.sort(reverse=True)
    return [f"{us / 1000:6.1f} ms {name}" for us, name in rows[:top]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/startup.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 runs of each")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv)
    reps = args.reps or (5 if args.quick else 10)

    header("start-up (bench/startup.py)")
    with scratch("dialer-bench-startup-") as tmp:
        db = tmp / "small.db"
        run_id = small_db(db)
        env = clean_env(tmp)
        commands = {
            "sqlite-utils --help": [str(BIN / "sqlite-utils"), "--help"],
            "dialer --help": [str(BIN / "dialer"), "--help"],
            "dialer status --json": [
                str(BIN / "dialer"),
                "status",
                str(run_id),
                "--json",
                "--db",
                str(db),
            ],
        }
        for command in commands.values():  # warm the page cache and .pyc files
            timed(command, env)
        walls: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(reps):
            for name, command in commands.items():
                t = timed(command, env)
                if t.code != 0:
                    note(f"{name} exited {t.code}: {t.out.strip()[-300:]}")
                walls[name].append(t.wall)
        probe = PROBE.format(heavy=HEAVY)
        loaded = {}
        for name, extra in (
            ("dialer --help", ["--help"]),
            ("dialer status --json", ["status", str(run_id), "--json", "--db", str(db)]),
        ):
            out = timed([PY, "-c", probe, *extra], env).out
            line = next((x for x in out.splitlines() if x.startswith("LOADED:")), "LOADED:?")
            loaded[name] = [m for m in line[len("LOADED:") :].split(",") if m]
        imports = {
            "dialer --help": slowest_imports(["--help"], env),
            "dialer status --json": slowest_imports(
                ["status", str(run_id), "--json", "--db", str(db)], env
            ),
        }

    base = median(walls["sqlite-utils --help"])
    for name, values in walls.items():
        note(
            f"{name:22} median {median(values) * 1000:6.0f} ms  "
            f"(min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})"
        )
    for name in ("dialer --help", "dialer status --json"):
        ratio = median(walls[name]) / base
        verdict(f"{name} vs sqlite-utils --help", f"{ratio:.2f}x", "<= 1.5x", ratio <= 1.5)
    for name, mods in loaded.items():
        bad = [m for m in mods if m in ("twilio", "phonenumbers")]
        verdict(
            f"{name} imports twilio/phonenumbers", ", ".join(bad) or "neither", "neither", not bad
        )
        note(f"  heavy packages loaded: {', '.join(mods) or 'none'}")
        note("  slowest imports (cumulative):")
        for line in imports[name]:
            note(f"    {line}")


if __name__ == "__main__":
    main()
