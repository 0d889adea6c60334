"""Run every benchmark and print every figure with the machine it ran on.

    python bench/run.py [--quick] [--only NAME ...]

Default: about 27 minutes; --quick: about 5. Each benchmark runs as its own process (so one's
memory is not the next one's), one after the other. Benchmarks print and compare: they never
fail on timing, and this exits 0 unless a benchmark crashed. A summary of every PASS/MISS
line follows at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PY, code_version, machine  # noqa: E402

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "loop",
    "api_cost",
    "import_csv",
    "status_scale",
    "startup",
    "long_run",
    "many_lines",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, about 5 minutes")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these")
    args = parser.parse_args(argv)

    print(f"dialer benchmarks{' (quick)' if args.quick else ''}", flush=True)
    print(machine(), flush=True)
    print(code_version(), flush=True)
    began = time.monotonic()
    verdicts: list[str] = []
    crashed: list[str] = []
    for name in args.only or BENCHMARKS:
        started = time.monotonic()
        command = [PY, "-u", str(HERE / f"{name}.py"), *(["--quick"] if args.quick else [])]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            if "[PASS]" in line or "[MISS]" in line:
                verdicts.append(f"{name}: {line.strip()}")
        if proc.wait() != 0:
            crashed.append(name)
            print(f"  !! {name} exited {proc.returncode}", flush=True)
        print(f"  ({name} took {time.monotonic() - started:.0f} s)", flush=True)

    print(f"\n=== summary ({time.monotonic() - began:.0f} s) ===")
    print(machine())
    for line in verdicts:
        print(f"  {line}")
    for name in crashed:
        print(f"  {name}: CRASHED (see its output above)")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
