"""An import under a running campaign: does the campaign keep its lines busy?

    python bench/import_campaign.py [--quick] [--rows R] [--lines N]

A campaign of N = 50 lines (quick: 20) dials the simulator (served from a child process) from
a store on disk, driven in-process by runner.drive exactly as `dialer start --simulate` does,
with the calls of bench/loop.py (every call answered, uniform in 0.5-1.5x 40 simulated s, at
speed 20: 2 s real; poll_interval 0.1 s real). After a warm-up, a second process imports a
generated 1,000,000-lead CSV (quick: 200,000; bench/import_csv.py's file) into the SAME
database: `dialer start FILE --simulate --max-duration 0 --concurrency N --db SAME.db` (the
import, then a run that dials nobody). The campaign drains once the import has ended and a
tail as long as the warm-up has passed.

Refill gaps (bench/loop.py: the k-th call end to the (N+k)-th create) are split by the time
the line was freed: before the import started (the baseline) and while it ran. Line
utilisation is the calls' overlap with each window over N x its length.
Targets: p99 refill gap during the import <= 2x the baseline's; utilisation during the import
>= 95% of the baseline's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # dialer_cli, from any cwd

from _common import (  # noqa: E402
    PY,
    ROOT,
    Ledger,
    SimProcess,
    campaign,
    clean_env,
    header,
    ms,
    note,
    pct,
    scratch,
    uniform_plan,
    verdict,
)
from import_csv import generate  # noqa: E402

SPEED = 20.0
MEAN_CALL = 40.0  # simulated seconds: 2 s real
POLL = 2.0  # simulated seconds: 0.1 s real


class ImportProcess:
    """Starts the import when the campaign has warmed up, and notes when it ran."""

    def __init__(self, csv: Path, db: Path, lines: int, warmup: float, tmp: Path):
        self.args = [PY, "-m", "dialer_cli", "start", str(csv), "--simulate", "--max-duration"]
        self.args += ["0", "--concurrency", str(lines), "--json", "--db", str(db)]
        self.warmup, self.env, self.out = warmup, clean_env(tmp), tmp / "import.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.began = self.ended = 0.0

    def sample(self, elapsed: float) -> None:
        """Called from the campaign loop's sleep, about every 0.1 s."""
        if self.proc is None and elapsed >= self.warmup:
            with self.out.open("wb") as out:
                self.proc = subprocess.Popen(
                    self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT
                )
            self.began = time.time()
        elif self.proc is not None and not self.ended and self.proc.poll() is not None:
            self.ended = time.time()

    def done(self) -> bool:
        return bool(self.ended) and time.time() > self.ended + self.warmup


def window_stats(ledger: Ledger, lines: int, start: float, end: float) -> tuple[list[float], float]:
    """Refill gaps of lines freed in [start, end), and the lines' utilisation in it."""
    ends = sorted(e for _, e in ledger.calls)
    creates = sorted(at for kind, at in ledger.requests if kind == "create")
    gaps = [
        creates[lines + k] - e
        for k, e in enumerate(ends)
        if lines + k < len(creates) and start <= e < end
    ]
    busy = sum(max(0.0, min(e, end) - max(c, start)) for c, e in ledger.calls)
    return gaps, busy / (lines * (end - start))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/import_campaign.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200,000 leads, 20 lines")
    parser.add_argument("--rows", type=int, default=None, help="leads imported")
    parser.add_argument("--lines", type=int, default=None, help="the campaign's N")
    args = parser.parse_args(argv)
    rows = args.rows or (200_000 if args.quick else 1_000_000)
    lines = args.lines or (20 if args.quick else 50)
    warmup = 10.0

    header("import under a running campaign (bench/import_campaign.py)")
    with scratch("dialer-bench-import-campaign-") as tmp:
        csv = tmp / "leads.csv"
        generate(csv, rows)
        db = tmp / "dialer.db"
        importer = ImportProcess(csv, db, lines, warmup, tmp)
        leads = int(lines / (MEAN_CALL / SPEED) * 600)  # ten minutes of dialling at most
        with SimProcess(SPEED, uniform_plan(MEAN_CALL)) as sim:
            campaign(
                sim, db, leads, lines, POLL, every=0.1, sample=importer.sample,
                should_drain=importer.done,
            )  # fmt: skip
            ledger = sim.ledger()
        if importer.proc is None or not importer.ended:
            note("the import did not run to its end: no figures")
            return
        if importer.proc.returncode != 3:
            note(f"the import exited {importer.proc.returncode}: {importer.out.read_text()[-300:]}")
        took = importer.ended - importer.began
        first = min(c for c, _ in ledger.calls)
        base_gaps, base_use = window_stats(ledger, lines, first + 2.0, importer.began)
        gaps, use = window_stats(ledger, lines, importer.began, importer.ended)
    note(
        f"N={lines}, calls {MEAN_CALL / SPEED:g} s real on average, poll_interval "
        f"{POLL / SPEED:g} s real; {rows:,} leads imported in {took:.1f} s "
        f"({rows / took:,.0f} rows/s) while the campaign dialled"
    )
    for name, g, u in (("before the import", base_gaps, base_use), ("during it", gaps, use)):
        note(
            f"{name:18} {len(g):5} gaps: p50 {ms(pct(g, 50))}, p99 {ms(pct(g, 99))}, "
            f"max {ms(max(g, default=0))}; lines busy {u:.1%}"
        )
    ratio = pct(gaps, 99) / pct(base_gaps, 99)
    verdict(
        "p99 refill gap during the import / before it",
        f"{ratio:.2f}x ({ms(pct(gaps, 99))} vs {ms(pct(base_gaps, 99))})",
        "<= 2x",
        ratio <= 2.0,
    )
    verdict(
        "lines busy during the import / before it",
        f"{use / base_use:.1%} ({use:.1%} vs {base_use:.1%})",
        ">= 95%",
        use / base_use >= 0.95,
    )


if __name__ == "__main__":
    main()
