"""Many lines at once: N = 50, 200, 500 and 1,000 calls in flight on the simulator.

    python bench/many_lines.py [--quick] [--sizes N ...] [--speed S] [--seconds T]

Real time, real store on disk, the real TwilioCalls adapter over HTTP to the simulator (served
from a child process, so the CPU printed is the dialer's alone), driven in-process by
runner.drive exactly as `dialer start --simulate` does. Every call is answered and lasts
uniformly 30-90 simulated s (never under 30 s); dialing.poll_interval 2 simulated s. At
speed 2 (default) a call lasts 15-45 s real and N = 1,000 lines turn over ~33 calls/s, twice
what 1,000 real lines of 60 s calls need. Each N dials for --seconds (90; quick: 30 at speed 4
and N = 50, 1,000), then stops dialling and lets its calls end: about 12 minutes in all
(quick: 2).

- Ramp: the first N creates fill the empty lines; the claim rate is N over the time they took
  (every line free, so each pass claims as fast as the store and the create allow).
- Steady state: from the N-th create to the last create. Line utilisation is line-seconds in
  calls over N x that span; the dialer's CPU per call is its CPU over that span divided by the
  calls that ended in it; status reads per poll interval are the fetch and list requests in it,
  besides one fetch per call that ended, divided by the poll intervals in it.
- The account's CPS (`--cps`, default 50: a high-CPS account; Twilio's default is 1) is the
  rate the claim must sustain; the run itself is not paced (no calls_per_second), so the
  measured ramp is the dialer's own ceiling.
- The simulator answers on loopback in about a millisecond; real Twilio takes 100-300 ms.
  One more run (N = 200, 30 s) answers every request `--latency` late (default 0.1 s,
  through the simulator's slow fault) and prints the claim rate that leaves (INFO);
  `--all-late S` answers every request of every N S seconds late.
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
    refill_gaps,
    scratch,
    uniform_plan,
    verdict,
)

MEAN_CALL = 60.0  # simulated s: uniform 30-90 s
POLL = 2.0  # simulated s


def busy_share(ledger: Ledger, lines: int, start: float, end: float) -> float:
    """Line utilisation between two epoch times: line-seconds in calls / (N x span)."""
    busy = sum(max(0.0, min(e, end) - max(c, start)) for c, e in ledger.calls)
    return busy / (lines * (end - start)) if end > start else float("nan")


def one(n: int, speed: float, seconds: float, latency: float = 0.0) -> dict[str, float]:
    """One campaign of N lines dialling for `seconds`, every request answered `latency` real
    seconds late; its figures."""
    from dialer_cli.simulator import Faults

    rate = n * speed / MEAN_CALL  # calls per second once every line is busy
    leads = int(n + rate * seconds * 1.5) + 100
    samples: list[tuple[float, float, int]] = []  # (epoch, dialer CPU, calls ended so far)
    ended = [0]

    def on_event(event: object) -> None:
        if getattr(event, "kind", None) == "call-ended":
            ended[0] += 1

    def sample(_elapsed: float) -> None:
        samples.append((time.time(), time.process_time(), ended[0]))

    loop = Loop()
    slow = Faults(p_slow=1.0, slow_s=latency) if latency else None
    with (
        scratch("dialer-bench-lines-") as tmp,
        SimProcess(speed, uniform_plan(MEAN_CALL, seed=n), faults=slow) as sim,
    ):
        campaign(
            sim,
            tmp / "dialer.db",
            leads,
            n,
            POLL,
            seed=n,
            every=0.5,
            sample=sample,
            deadline=seconds,
            on_event=on_event,
            loop=loop,
        )
        ledger = sim.ledger()

    creates = sorted(at for kind, at in ledger.requests if kind == "create")
    first, full, last = creates[0], creates[min(n, len(creates)) - 1], creates[-1]
    inside = [s for s in samples if full <= s[0] <= last]
    cpu_per_call = float("nan")
    if len(inside) >= 2 and inside[-1][2] > inside[0][2]:
        cpu_per_call = (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])
    poll = POLL / speed
    reads = [at for k, at in ledger.requests if k in ("fetch", "list") and full <= at < last]
    lists = sum(1 for k, at in ledger.requests if k == "list" and full <= at < last)
    ended_in = sum(1 for _, e in ledger.calls if full <= e < last)
    intervals = (last - full) / poll
    gaps = refill_gaps(ledger, n)
    return {
        "calls": len(ledger.calls),
        "peak": float(max_live(ledger)),
        "ramp": full - first,
        "claims_per_s": (n - 1) / (full - first) if full > first else float("nan"),
        "util": busy_share(ledger, n, full, last),
        "util_all": busy_share(ledger, n, first, last),
        "cpu_per_call": cpu_per_call,
        "reads": max(len(reads) - ended_in, 0) / intervals if intervals else float("nan"),
        "lists": lists / intervals if intervals else float("nan"),
        "gap_p50": pct(gaps, 50),
        "gap_p99": pct(gaps, 99),
        "pass_p50": pct(loop.busy, 50),
        "pass_p99": pct(loop.busy, 99),
        "dialer_cpu": loop.cpu / loop.wall,
        "sim_cpu": ledger.cpu / loop.wall,
        "wall": loop.wall,
    }


def max_live(ledger: Ledger) -> int:
    """Peak simultaneous calls at the simulator (created inclusive, ended exclusive)."""
    peak = live = 0
    for _, delta in sorted([(c, 1) for c, _ in ledger.calls] + [(e, -1) for _, e in ledger.calls]):
        live += delta
        peak = max(peak, live)
    return peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/many_lines.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="N = 50 and 1,000, 30 s each")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--speed", type=float, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="dial this long per N")
    parser.add_argument("--cps", type=float, default=50.0, help="the account's calls per second")
    parser.add_argument(
        "--latency",
        type=float,
        default=None,
        help="the round trip of the extra run that shows what a distant Twilio costs "
        "(s; default 0.1; quick: 0, no such run)",
    )
    parser.add_argument(
        "--all-late",
        type=float,
        default=0.0,
        help="answer every request of every N this many s late (default 0: loopback speed)",
    )
    args = parser.parse_args(argv)
    sizes = args.sizes or ([50, 1000] if args.quick else [50, 200, 500, 1000])
    speed = args.speed or (4.0 if args.quick else 2.0)
    seconds = args.seconds or (30.0 if args.quick else 90.0)
    latency = (0.0 if args.quick else 0.1) if args.latency is None else args.latency

    header("many lines (bench/many_lines.py)")
    note(
        f"calls answered, {MEAN_CALL / 2 / speed:g}-{MEAN_CALL * 1.5 / speed:g} s real "
        f"({MEAN_CALL / 2:g}-{MEAN_CALL * 1.5:g} simulated s at speed {speed:g}), poll_interval "
        f"{POLL / speed:g} s real; dialling {seconds:g} s per N; account CPS assumed {args.cps:g}"
        + (f"; every request answered {ms(args.all_late)} late" if args.all_late else "")
    )
    note(
        f"{'N':>5} {'calls':>6} {'peak':>5} {'ramp s':>7} {'claims/s':>9} {'util':>6} "
        f"{'util+ramp':>9} {'CPU/call':>9} {'reads/int':>9} {'gap p50':>9} {'gap p99':>9} "
        f"{'pass p99':>9} {'dialer':>7} {'sim':>5}"
    )
    results: dict[int, dict[str, float]] = {}
    for n in sizes:
        r = results[n] = one(n, speed, seconds, args.all_late)
        note(
            f"{n:>5} {r['calls']:>6.0f} {r['peak']:>5.0f} {r['ramp']:>7.2f} "
            f"{r['claims_per_s']:>9.0f} {r['util']:>6.1%} {r['util_all']:>9.1%} "
            f"{ms(r['cpu_per_call']):>9} {r['reads']:>9.1f} {ms(r['gap_p50']):>9} "
            f"{ms(r['gap_p99']):>9} {ms(r['pass_p99']):>9} {r['dialer_cpu']:>7.0%} "
            f"{r['sim_cpu']:>5.0%}"
        )
    for n, r in results.items():
        verdict(f"N={n} never more than N live", f"peak {r['peak']:.0f}", f"<= {n}", r["peak"] <= n)
        verdict(
            f"N={n} line utilisation, N-th create to last create",
            f"{r['util']:.1%}",
            ">= 95%",
            r["util"] >= 0.95,
        )
        verdict(
            f"N={n} claims per second while filling empty lines",
            f"{r['claims_per_s']:.0f}/s ({n} lines filled in {r['ramp']:.1f} s)",
            f">= the account's CPS ({args.cps:g})",
            r["claims_per_s"] >= args.cps,
        )
    lo, hi = min(results), max(results)
    growth = results[hi]["cpu_per_call"] / results[lo]["cpu_per_call"]
    verdict(
        f"dialer CPU per call, N={lo} -> N={hi}",
        f"{ms(results[lo]['cpu_per_call'])} -> {ms(results[hi]['cpu_per_call'])} ({growth:.2f}x)",
        "flat: <= 1.5x",
        growth <= 1.5,
    )
    reads = ", ".join(f"{r['reads']:.1f}" for r in results.values())
    spread = results[hi]["reads"] / results[lo]["reads"]
    verdict(
        f"status reads per poll interval (besides one fetch per call that ended), N={lo}..{hi}",
        f"{reads} ({spread:.2f}x)",
        "flat in N: <= 1.5x",
        spread <= 1.5,
    )
    if latency:
        slow_n = min(200, hi)
        r = one(slow_n, speed, 30.0, latency)
        verdict(
            f"N={slow_n} with every request answered {ms(latency)} late (a distant Twilio)",
            f"{r['claims_per_s']:.1f} claims/s ({slow_n} lines filled in {r['ramp']:.1f} s); "
            f"peak {r['peak']:.0f} live",
            "INFO: creates go one at a time, so a round trip of L caps the claim rate near 1/L",
            None,
        )


if __name__ == "__main__":
    main()
