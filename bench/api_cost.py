"""API cost: requests to Twilio per completed call, and per poll interval as N grows.

    python bench/api_cost.py [--quick]

Each N (3, 10, 50, 100) dials 2N leads (quick: N) on the simulator in real time, calls known
(answered, uniform 0.5-1.5 x 40 simulated s), speed 4: calls of 10 s and a poll interval of
0.5 s real, slow enough for the loop to keep up at N = 100 so the count is not capped by it.
Requests are counted from the simulator's ledger (sim.requests()).

The floor per call is one create plus ceil(call length / poll interval) status reads. Status
reads per poll interval are counted while all N lines are busy (from the N-th create to the
moment lines start to empty for good). The target is flat in N: one status-filtered list
request (PageSize up to 1000) per interval sees every live call; fetching each call is linear.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    SimProcess,
    campaign,
    header,
    note,
    scratch,
    uniform_plan,
    verdict,
)

SPEED = 4.0
MEAN_CALL = 40.0  # simulated s: 10 s real
POLL = 2.0  # simulated s: 0.5 s real
SIZES = (3, 10, 50, 100)


def one(n: int, leads: int) -> dict[str, float]:
    with scratch("dialer-bench-api-") as tmp, SimProcess(SPEED, uniform_plan(MEAN_CALL)) as sim:
        campaign(sim, tmp / "dialer.db", leads, n, POLL)
        ledger = sim.ledger()
    poll = POLL / SPEED
    kinds = [k for k, _ in ledger.requests]
    reads = [at for k, at in ledger.requests if k in ("fetch", "list")]
    creates = sorted(at for k, at in ledger.requests if k == "create")
    ends = sorted(e for _, e in ledger.calls)
    window = (creates[n - 1], ends[len(ends) - n])
    in_window = sum(1 for at in reads if window[0] <= at < window[1])
    # the issue allows one fetch per call that ended on top of the polling itself
    ended = sum(1 for e in ends if window[0] <= e < window[1])
    intervals = (window[1] - window[0]) / poll
    floor = sum(1 + math.ceil((e - c) / poll) for c, e in ledger.calls)
    return {
        "calls": len(ledger.calls),
        "requests": len(kinds),
        "creates": kinds.count("create"),
        "fetches": kinds.count("fetch"),
        "lists": kinds.count("list"),
        "floor": floor,
        "per_interval": in_window / intervals,
        "polls_per_interval": max(in_window - ended, 0) / intervals,
        "window": window[1] - window[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/api_cost.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one wave of N calls per N")
    args = parser.parse_args(argv)

    header("API cost (bench/api_cost.py)")
    note(
        f"simulator speed {SPEED:g}: calls {MEAN_CALL / SPEED:g} s real on average, "
        f"poll_interval {POLL / SPEED:g} s real; {'N' if args.quick else '2N'} leads per N"
    )
    note(
        f"{'N':>4} {'calls':>6} {'requests':>9} {'creates':>8} {'fetches':>8} {'lists':>6} "
        f"{'req/call':>9} {'floor/call':>10} {'vs floor':>9} {'reads/interval':>15}"
    )
    per_interval: dict[int, float] = {}
    polls: dict[int, float] = {}
    for n in SIZES:
        r = one(n, n if args.quick else 2 * n)
        per_call, floor_call = r["requests"] / r["calls"], r["floor"] / r["calls"]
        per_interval[n] = r["per_interval"]
        polls[n] = r["polls_per_interval"]
        note(
            f"{n:>4} {r['calls']:>6.0f} {r['requests']:>9.0f} {r['creates']:>8.0f} "
            f"{r['fetches']:>8.0f} {r['lists']:>6.0f} {per_call:>9.2f} {floor_call:>10.2f} "
            f"{per_call / floor_call:>8.2f}x {r['per_interval']:>15.1f}"
        )
    for n in SIZES:
        verdict(
            f"status reads per poll interval at N={n}",
            f"{per_interval[n]:.1f} ({per_interval[n] / n:.2f} per live call); "
            f"{polls[n]:.1f} besides one fetch per call that ended",
            "flat in N (3 list requests per interval, +1 fetch per call that ended)",
            None,
        )
    growth = polls[SIZES[-1]] / polls[SIZES[0]]
    verdict(
        f"growth of reads per interval (besides the fetch of each ended call), "
        f"N={SIZES[0]} -> N={SIZES[-1]}",
        f"{growth:.1f}x while N grew {SIZES[-1] / SIZES[0]:.0f}x",
        "flat: <= 2x",
        growth <= 2,
    )


if __name__ == "__main__":
    main()
