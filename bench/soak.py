"""Soak: the random-kill scenario of tests/test_crash.py at length, by hand.

    python bench/soak.py --kills 200 --leads 200 --seed 7

Dials `--leads` leads with N calls at most through the simulator (in this process, real
clock), SIGKILLs the driver `--kills` times at seeded random moments (external kills of
`dialer resume` and step-boundary kills through tests.crash_entry), resumes until the run
completes, then judges every promise from the simulator's ledger and `dialer status --json`.
When the run completes before the kills are spent, a new run (new numbers) takes the rest.
Exit status 0 when every promise held.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=__doc__)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--leads", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", "-n", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))  # runnable as `python bench/soak.py` from the repo root
    from tests.test_crash import Stalled, judge, make_campaign, random_kills, simulator

    rng = random.Random(args.seed)
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="dialer-soak-"))
    kills = leads = double = lost = calls = 0
    peak, failures, campaign = 0, [], 0
    max_step = max(1, args.leads // max(args.kills, 1))
    while kills < args.kills and campaign * args.leads < 9000:  # 4-digit fictional numbers
        start = 100 + campaign * args.leads
        with simulator() as sim:
            c = make_campaign(
                work / f"run-{campaign}", sim, args.leads, concurrency=args.concurrency,
                start=start,
            )  # fmt: skip

            def say(line: str, campaign: int = campaign) -> None:
                elapsed = time.monotonic() - began
                print(f"[{elapsed:7.1f}s] run {campaign}: {line}", flush=True)

            stalled = None
            try:
                made = random_kills(c, rng, args.kills - kills, max_step=max_step, say=say)
                c.finish(timeout=600)
            except Stalled as stall:
                made, stalled = len(c.kills), str(stall).splitlines()[0]
                say(f"STALLED: {stalled}")
            verdict = judge(sim, c.status(), c.numbers, c.concurrency)
        if stalled:
            failures.append(f"run {campaign} stalled: {stalled}")
        kills += made
        leads += verdict.leads
        calls += verdict.calls
        double += verdict.double_dials
        lost += verdict.lost
        peak = max(peak, verdict.max_live)
        failures += [f"run {campaign}: {p}" for p in verdict.problems]
        print(f"run {campaign}: {made} kills; {verdict.line()}", flush=True)
        campaign += 1

    for failure in failures:
        print(f"FAIL {failure}")
    print(
        f"soak: {kills} kills, {leads} leads, {double} double dials, {lost} lost, "
        f"max live {peak}/{args.concurrency}, {time.monotonic() - began:.0f} s"
        + (f", {len(failures)} FAILURES (work dir {work})" if failures else "")
    )
    if not failures and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
