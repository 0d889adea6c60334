"""Long run: 100,000 leads, N = 50, on the simulator: line utilisation, and the dialer's CPU and
memory over the run.

    python bench/long_run.py [--quick] [--leads L] [--speed S] [--minutes M | --full]

Real time, real store on disk, the real adapter over HTTP to the simulator (its own process, so
the CPU and RSS printed are the dialer's alone), driven in-process by runner.drive. Calls follow
the simulator's default plan (65% answered after 15-90 s of talk; busy, no-answer, failed
after 2-10 s of ringing: about 40 simulated s on average), dialing.poll_interval 2 simulated s.

Speed 20 (the `--simulate` default: calls of 2 s real on average, polls every 0.1 s) is the
fastest at which this engine keeps 50 lines busy: it is CPU-bound at about twice that. At that
speed 100,000 leads take over an hour, so the default run stops dialling after --minutes (5;
quick: 5,000 leads and 45 s) and lets the calls in flight finish; --full dials every lead.

Utilisation is judged while leads were still being dialled (first create to last create): the
end of a capped run is a drain no dialler avoids. The whole-run figure is printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    Ledger,
    Loop,
    SimProcess,
    campaign,
    header,
    ms,
    note,
    pct,
    rss_mb,
    scratch,
    verdict,
)

N = 50
POLL = 2.0  # simulated seconds


def busy_share(ledger: Ledger, start: float, end: float) -> float:
    """Line utilisation between two epoch times: line-seconds in calls / (N x span)."""
    busy = sum(max(0.0, min(e, end) - max(c, start)) for c, e in ledger.calls)
    return busy / (N * (end - start)) if end > start else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/long_run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5,000 leads, 45 s")
    parser.add_argument("--leads", type=int, default=None)
    parser.add_argument("--speed", type=float, default=20.0)
    parser.add_argument("--minutes", type=float, default=None, help="dial for this long")
    parser.add_argument("--full", action="store_true", help="dial every lead (no time cap)")
    args = parser.parse_args(argv)
    leads = args.leads or (5_000 if args.quick else 100_000)
    minutes = None if args.full else args.minutes or (0.75 if args.quick else 5.0)
    every = 10.0 if args.quick else 30.0

    header("long run (bench/long_run.py)")
    note(
        f"{leads:,} leads, N={N}, simulator speed {args.speed:g} (calls ~{40 / args.speed:.1f} s "
        f"real on average), poll_interval {POLL / args.speed:.2f} s real; "
        + (f"dialling stops after {minutes:g} min" if minutes else "every lead dialled")
    )
    ended = [0]
    samples: list[tuple[float, float, float, float, int, int]] = []  # wall, epoch, cpu, rss...
    loop = Loop()

    def on_event(event: object) -> None:
        if getattr(event, "kind", None) == "call-ended":
            ended[0] += 1

    def sample(elapsed: float) -> None:
        samples.append(
            (elapsed, time.time(), time.process_time(), rss_mb(), ended[0], len(loop.busy))
        )

    with scratch("dialer-bench-long-") as tmp, SimProcess(args.speed, None, seed=11) as sim:
        began = time.perf_counter()
        cpu0 = time.process_time()
        samples.append((0.0, time.time(), cpu0, rss_mb(), 0, 0))
        result = campaign(
            sim,
            tmp / "dialer.db",
            leads,
            N,
            POLL,
            seed=5,
            every=every,
            sample=sample,
            deadline=None if minutes is None else minutes * 60,
            on_event=on_event,
            loop=loop,
        )
        sample(time.perf_counter() - began)
        ledger = sim.ledger()

    creates = sorted(at for kind, at in ledger.requests if kind == "create")
    first, last = creates[0], creates[-1]
    end = max(e for _, e in ledger.calls)
    durations = sum(e - c for c, e in ledger.calls)
    steady = busy_share(ledger, first, last)
    whole = durations / (N * (end - first))
    calls = len(ledger.calls)

    note(
        f"{'t (s)':>7} {'calls':>7} {'calls/s':>8} {'CPU':>5} {'CPU/call':>9} {'RSS MB':>7} "
        f"{'pass p50':>9} {'util':>6}"
    )
    per_call: list[float] = []
    for prev, cur in zip(samples, samples[1:], strict=False):
        wall, calls_done = cur[0] - prev[0], cur[4] - prev[4]
        cpu = cur[2] - prev[2]
        passes = result.busy[prev[5] : cur[5]]
        cost = cpu / calls_done if calls_done else float("nan")
        if calls_done and cur[1] <= last:
            per_call.append(cost)
        note(
            f"{cur[0]:>7.0f} {cur[4]:>7} {calls_done / wall:>8.1f} {cpu / wall:>5.0%} "
            f"{ms(cost):>9} {cur[3]:>7.1f} {ms(pct(passes, 50)):>9} "
            f"{busy_share(ledger, prev[1], cur[1]):>6.1%}"
        )
    awake = 1 - result.slept / result.wall
    note(
        f"{calls:,} calls of {leads:,} leads in {result.wall:.0f} s ({calls / result.wall:.1f} "
        f"calls/s); loop awake {awake:.0%} of the time, dialer CPU {result.cpu / result.wall:.0%}"
        f", simulator CPU {ledger.cpu / result.wall:.0%}"
    )
    if calls < leads:
        rate = calls / (last - first)
        note(f"at {rate:.1f} calls/s all {leads:,} leads would take {leads / rate / 60:.0f} min")
    verdict(
        "line utilisation while dialling (first to last create)",
        f"{steady:.1%}",
        ">= 95%",
        steady >= 0.95,
    )
    capped = calls < leads
    verdict(
        "line utilisation, whole run incl. the final drain",
        f"{whole:.1%}",
        ">= 95%; INFO when capped (the drain after the cap counts against it)",
        None if capped else whole >= 0.95,
    )
    if len(per_call) >= 2:
        growth = per_call[-1] / per_call[0]
        verdict(
            "dialer CPU per call, last interval vs first",
            f"{ms(per_call[0])} -> {ms(per_call[-1])} ({growth:.2f}x)",
            "flat: <= 1.25x",
            growth <= 1.25,
        )
    rss = [s[3] for s in samples[1:] if s[1] <= last] or [samples[-1][3]]
    verdict(
        "dialer RSS while dialling, first sample -> last (max)",
        f"{rss[0]:.1f} -> {rss[-1]:.1f} MB (max {max(rss):.1f}; {samples[0][3]:.1f} before import)",
        "flat: grows <= 10 MB",
        rss[-1] - rss[0] <= 10,
    )
    if awake > 0.9:
        note("the loop was awake over 90% of the time: the engine cannot keep up (CPU-bound)")


if __name__ == "__main__":
    main()
