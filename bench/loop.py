"""Loop overhead: a campaign's makespan against the zero-overhead ideal, and the refill gap.

    python bench/loop.py [--quick] [--reps R]

Real time, real store on disk, the real TwilioCalls adapter over HTTP to the simulator (served
from a child process), driven in-process by runner.drive exactly as `dialer start --simulate`
does. Every call is answered and its length is known: uniform in [0.5, 1.5] x 40 simulated s,
at speed 20 that is 2 s of real time on average; dialing.poll_interval 2.0 simulated s is 0.1 s
real, 5% of the mean call.

The ideal is the same calls (their simulated lengths, in claim order) list-scheduled on N lines
with no gap at all. The refill gap is, for the k-th call to end, the time until the (N+k)-th
create request: how long a freed line stays empty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    SimProcess,
    campaign,
    header,
    ideal_makespan,
    median,
    ms,
    note,
    pct,
    refill_gaps,
    scratch,
    uniform_plan,
    verdict,
)

SPEED = 20.0
MEAN_CALL = 40.0  # simulated seconds: 2 s real
POLL = 2.0  # simulated seconds: 0.1 s real, 5% of the mean call


def one(n: int, leads: int) -> dict[str, float | list[float]]:
    with scratch("dialer-bench-loop-") as tmp, SimProcess(SPEED, uniform_plan(MEAN_CALL)) as sim:
        loop = campaign(sim, tmp / "dialer.db", leads, n, POLL)
        ledger = sim.ledger()
    durations = [end - created for created, end in ledger.calls]
    actual = max(e for _, e in ledger.calls) - min(c for c, _ in ledger.calls)
    ideal = ideal_makespan(durations, n)
    return {
        "ratio": actual / ideal,
        "actual": actual,
        "ideal": ideal,
        "gaps": refill_gaps(ledger, n),
        "busy": loop.busy,
        "busy_share": 1 - loop.slept / loop.wall,
        "cpu_share": loop.cpu / loop.wall,
        "sim_cpu_share": ledger.cpu / loop.wall,
        "calls": len(ledger.calls),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/loop.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer leads, one repetition")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3; quick 1)")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    cases = [(3, 24 if args.quick else 45), (50, 200 if args.quick else 500)]

    header("loop overhead (bench/loop.py)")
    note(
        f"simulator speed {SPEED:g}, calls {MEAN_CALL / SPEED:g} s real on average "
        f"(uniform 0.5-1.5x), poll_interval {POLL / SPEED:g} s real "
        f"({POLL / MEAN_CALL:.0%} of the mean call); median of {reps} run(s)"
    )
    for n, leads in cases:
        runs = [one(n, leads) for _ in range(reps)]
        ratios = [float(r["ratio"]) for r in runs]  # type: ignore[arg-type]
        gaps = [g for r in runs for g in r["gaps"]]  # type: ignore[union-attr]
        busy = [b for r in runs for b in r["busy"]]  # type: ignore[union-attr]
        mid = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
        note(
            f"N={n}, {leads} leads: makespan {float(mid['actual']):.2f} s vs ideal "
            f"{float(mid['ideal']):.2f} s; ratios {', '.join(f'{x:.3f}' for x in ratios)}"
        )
        verdict(
            f"N={n} makespan / ideal (median)",
            f"{median(ratios):.3f}x",
            "<= 1.05x",
            median(ratios) <= 1.05,
        )
        verdict(
            f"N={n} refill gap (end -> next create, {len(gaps)} gaps)",
            f"p50 {ms(pct(gaps, 50))}, p99 {ms(pct(gaps, 99))}, max {ms(max(gaps, default=0))}",
            "measure (poll_interval is 100 ms)",
            None,
        )
        verdict(
            f"N={n} loop pass (tick) time",
            f"p50 {ms(pct(busy, 50))}, p99 {ms(pct(busy, 99))}; loop awake "
            f"{median([float(r['busy_share']) for r in runs]):.0%} of the wall time, dialer CPU "
            f"{median([float(r['cpu_share']) for r in runs]):.0%}, simulator CPU "
            f"{median([float(r['sim_cpu_share']) for r in runs]):.0%}",
            "measure",
            None,
        )


if __name__ == "__main__":
    main()
