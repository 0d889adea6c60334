"""Import: a 1,000,000-lead CSV through `dialer`, side by side with `sqlite-utils insert`.

    python bench/import_csv.py [--quick] [--rows R] [--reps K]

The file (quick: 100,000 rows) is generated under a temp dir: name, phone, email, city; about
55% of the numbers in E.164 (+1 NPA NXX XXXX in real area codes), the rest in national
formats ((212) 734-5678, 212-734-5678, 212.734.5678, 1 212 734 5678, 2127345678), plus 2%
duplicates (an earlier number, written another way) and 1% invalid numbers.

Each command runs as a subprocess, alternating, K times (default 3; 2 at 1M rows, about two
minutes a round), the median quoted; peak RSS is that child's own ru_maxrss (os.wait4):
  dry run      dialer start FILE --dry-run --simulate --json       parse + validate only
  full import  dialer start FILE --simulate --max-duration 0 --json --db NEW.db
               the real `start`: import into SQLite (in chunks, the run published by one last
               commit), then stop before dialling anybody (a deadline of now: exit 3)
  status       dialer status 1 --json --db NEW.db                  the imported run, after it
  baseline     sqlite-utils insert NEW.db leads FILE --csv --no-detect-types
Targets: full import >= 1.5x sqlite-utils' rows/s; peak RSS <= 100 MB.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    AREA_CODES,
    BAD_EXCHANGES,
    BIN,
    PY,
    clean_env,
    header,
    median,
    note,
    scratch,
    timed,
    verdict,
)

FIRST = "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth Ana Wei".split()
LAST = "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Chen".split()
CITIES = "Springfield Riverside Franklin Greenville Clinton Salem Madison Georgetown".split()
INVALID = ("12345", "(212) 123-4567", "555-1234", "n/a", "", "+1 999 555 0000", "call me")


def national(digits: str, style: int) -> str:
    a, x, s = digits[:3], digits[3:6], digits[6:]
    return (f"({a}) {x}-{s}", f"{a}-{x}-{s}", f"{a}.{x}.{s}", f"1 {a} {x} {s}", digits)[style]


def generate(path: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """Write the lead file; returns how many rows of each kind it holds."""
    rng = random.Random(seed)
    counts = {"e164": 0, "national": 0, "duplicate": 0, "invalid": 0}
    written: list[str] = []
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("name,phone,email,city\n")
        for i in range(rows):
            x = rng.random()
            if x < 0.01:
                phone, kind = rng.choice(INVALID), "invalid"
            elif x < 0.03 and written:
                phone, kind = national(rng.choice(written), rng.randrange(5)), "duplicate"
            else:
                while True:
                    exchange = rng.randint(200, 999)
                    if str(exchange) not in BAD_EXCHANGES and exchange % 100 != 11:
                        break
                digits = f"{rng.choice(AREA_CODES)}{exchange}{rng.randint(0, 9999):04d}"
                if len(written) < 100_000:
                    written.append(digits)
                if rng.random() < 0.57:
                    phone, kind = f"+1{digits}", "e164"
                else:
                    phone, kind = national(digits, rng.randrange(5)), "national"
            counts[kind] += 1
            first, last = rng.choice(FIRST), rng.choice(LAST)
            name = f"{first} {last}" if i % 10 else f'"{last}, {first}"'
            f.write(f"{name},{phone},{first.lower()}.{last.lower()}{i}@example.com,")
            f.write(f"{rng.choice(CITIES)}\n")
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/import_csv.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100,000 rows")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--reps", type=int, help="runs of each (default 3; 2 at 1M rows)")
    args = parser.parse_args(argv)
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    reps = args.reps or (2 if rows >= 1_000_000 else 3)

    header("import (bench/import_csv.py)")
    with scratch("dialer-bench-import-") as tmp:
        csv_path = tmp / "leads.csv"
        counts = generate(csv_path, rows)
        size = csv_path.stat().st_size / 1e6
        note(f"{rows:,} rows, {size:.0f} MB: " + ", ".join(f"{v:,} {k}" for k, v in counts.items()))
        env = clean_env(tmp)
        dialer = [PY, "-m", "dialer_cli"]
        results: dict[str, list[tuple[float, float]]] = {
            "dry": [],
            "full": [],
            "status": [],
            "sqlite": [],
        }
        for rep in range(reps):
            db = tmp / f"dialer-{rep}.db"
            dry = timed([*dialer, "start", str(csv_path), "--dry-run", "--simulate", "--json"], env)
            full = timed(
                [
                    *dialer,
                    "start",
                    str(csv_path),
                    "--simulate",
                    "--max-duration",
                    "0",
                    "--json",
                    "--db",
                    str(db),
                ],
                env,
            )
            status = timed([*dialer, "status", "1", "--json", "--db", str(db)], env)
            base = timed(
                [
                    str(BIN / "sqlite-utils"),
                    "insert",
                    str(tmp / f"su-{rep}.db"),
                    "leads",
                    str(csv_path),
                    "--csv",
                    "--no-detect-types",
                ],
                env,
            )
            if rep == 0:
                for name, t, ok in (
                    ("dry run", dry, (0,)),
                    ("full import", full, (3,)),
                    ("status", status, (0,)),
                    ("sqlite-utils", base, (0,)),
                ):
                    if t.code not in ok:
                        note(f"{name} exited {t.code}: {t.out.strip()[-400:]}")
                if dry.code == 0:
                    plan = json.loads(dry.out.strip().splitlines()[-1])
                    skipped = {k: v["count"] for k, v in plan["skipped"].items()}
                    note(f"dialer's verdict: would dial {plan['would_dial']:,}, skipped {skipped}")
            for key, t in (("dry", dry), ("full", full), ("status", status), ("sqlite", base)):
                results[key].append((t.wall, t.peak_mb))
            for p in tmp.glob("*.db*"):
                p.unlink() if p.is_file() else None

    def rate(key: str) -> float:
        return rows / median([w for w, _ in results[key]])

    def peak(key: str) -> float:
        return max(m for _, m in results[key])

    for key, name in (
        ("dry", "dry run (parse+validate)"),
        ("full", "full import (start)"),
        ("sqlite", "sqlite-utils insert"),
    ):
        walls = [w for w, _ in results[key]]
        note(
            f"{name:26} {rate(key):>9,.0f} rows/s  median {median(walls):.1f} s  "
            f"(runs: {', '.join(f'{w:.1f}' for w in walls)} s)  peak RSS {peak(key):.0f} MB"
        )
    ratio = rate("full") / rate("sqlite")
    verdict(
        "full import speed vs sqlite-utils",
        f"{ratio:.2f}x ({rate('full'):,.0f} vs {rate('sqlite'):,.0f} rows/s)",
        ">= 1.5x",
        ratio >= 1.5,
    )
    verdict(
        "dry run speed vs sqlite-utils", f"{rate('dry') / rate('sqlite'):.2f}x", "measure", None
    )
    verdict("full import peak RSS", f"{peak('full'):.0f} MB", "<= 100 MB", peak("full") <= 100)
    verdict("dry run peak RSS", f"{peak('dry'):.0f} MB", "<= 100 MB", peak("dry") <= 100)
    walls = [w for w, _ in results["status"]]
    verdict(
        f"status --json of the {rows:,}-lead run just imported",
        f"median {median(walls):.2f} s (runs: {', '.join(f'{w:.2f}' for w in walls)} s)",
        "measure (bench/status_scale.py: <= 0.5 s)",
        None,
    )


if __name__ == "__main__":
    main()
