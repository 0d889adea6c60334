"""Explore: seeded random scenarios of real dialer processes, judged from the simulator's ledger.

    python bench/explore.py --scenarios 500 --seed 1
    python bench/explore.py --replay SEED --verbose --keep

Each scenario (its own seed, derived from --seed) starts one to three runs on one database and
one account through `tests/clock_entry.py` (a shared clock 60× faster than real time), injects
Twilio's faults (429, 500, lost and held responses, unreachable, clock offset), process faults
(SIGKILL, SIGSTOP past the heartbeat, SIGINT, SIGTERM) and commands (start twice, resume, stop,
status, cleanup-stuck, the database path spelled four ways), resumes every run at the end and
judges the promises (see tests/explore.py). A failing scenario prints its seed, its violations
and the command that replays it. Exit status 1 if any promise was broken.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python bench/explore.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--scenarios", "-k", type=int, default=20, help="how many scenarios")
    parser.add_argument("--seed", type=int, default=0, help="the session's seed")
    parser.add_argument("--replay", type=int, metavar="SEED", help="run one scenario's seed")
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=1,
        help="scenarios at once (each is a few processes; 2 on a 2-core machine)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--verbose", "-v", action="store_true", help="print plans and events")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))  # runnable as `python bench/explore.py` from the repo root
    from tests.explore import replay_command, run_one, scenario_seed

    seeds = (
        [args.replay]
        if args.replay is not None
        else [scenario_seed(args.seed, i) for i in range(args.scenarios)]
    )
    say = print if args.verbose else (lambda _: None)
    work = Path(tempfile.mkdtemp(prefix="dialer-explore-"))
    began, failed, violations, clean = time.monotonic(), 0, 0, []

    def timed(seed: int) -> tuple[int, list[str], float]:
        t = time.monotonic()
        found = run_one(seed, work, keep=args.keep, say=say)
        return seed, found, time.monotonic() - t

    pool = ThreadPoolExecutor(max_workers=max(args.jobs, 1))  # each scenario is processes
    try:
        done = pool.map(timed, seeds) if args.jobs > 1 else map(timed, seeds)
        for i, (seed, found, took) in enumerate(done, start=1):
            if found:
                failed += 1
                violations += len(found)
                head = f"scenario {i}/{len(seeds)} seed {seed}"
                print(f"{head}: {len(found)} violations ({took:.1f} s)")
                for line in found:
                    print(f"  {line}")
                print(f"  replay: {replay_command(seed)}", flush=True)
            else:
                clean.append(took)
            if not found and (args.verbose or i % 25 == 0):
                print(f"scenario {i}/{len(seeds)} seed {seed}: ok ({took:.1f} s)", flush=True)
    finally:
        pool.shutdown(cancel_futures=True)
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - began
    if clean:
        mean = sum(clean) / len(clean)
        print(f"{len(clean)} clean scenarios: mean {mean:.1f} s, longest {max(clean):.1f} s")
    if failed:
        print(f"{failed} scenarios broke a promise (replay commands above)")
    print(f"explore: {len(seeds)} scenarios, {violations} violations, {total:.0f} s")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
