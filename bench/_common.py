"""What the benchmark scripts share: the machine line, statistics, verdicts, timed subprocesses,
generated numbers and leads, the simulator in a process of its own, and a campaign driver.

Benchmarks print and compare; they never fail on timing.
"""

from __future__ import annotations

import heapq
import math
import multiprocessing
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repository
    sys.path.insert(1, str(ROOT))
PY = sys.executable
BIN = Path(PY).parent

# Real area codes of the US and Canada (all in use), for numbers that look real and are valid.
AREA_CODES = (
    "201 202 203 205 206 207 208 209 210 212 213 214 215 216 217 218 219 224 225 228 229 231 "
    "234 239 240 248 251 252 253 254 256 260 262 267 269 270 276 281 301 302 303 304 305 307 "
    "308 309 310 312 313 314 315 316 317 318 319 320 321 323 325 330 334 336 337 339 347 351 "
    "352 360 361 386 401 402 404 405 406 407 408 409 410 412 413 414 415 417 419 423 425 432 "
    "434 435 440 443 469 478 479 480 484 501 502 503 504 505 507 508 509 510 512 513 515 516 "
    "517 518 520 530 540 541 551 559 561 562 563 567 570 571 573 574 575 580 585 586 601 602 "
    "603 605 606 607 608 609 610 612 614 615 616 617 618 619 620 623 626 630 631 636 641 646 "
    "650 651 660 661 662 678 682 701 702 703 704 706 707 708 712 713 714 715 716 717 718 719 "
    "720 724 727 731 732 734 740 754 757 760 763 765 770 772 773 774 775 781 785 786 801 802 "
    "803 804 805 806 808 810 812 813 814 815 816 817 818 828 830 831 832 843 845 847 848 850 "
    "856 857 858 859 860 862 863 864 865 870 872 878 901 903 904 906 907 908 909 910 912 913 "
    "914 915 916 917 918 919 920 925 928 931 936 937 940 941 947 949 951 952 954 956 970 971 "
    "972 973 978 979 980 985 989"
).split()
BAD_EXCHANGES = {"555", "950", "958", "959", "976"}


# -- the machine and the figures -----------------------------------------------------------------


def code_version() -> str:
    """The commit measured, and whether the work tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dialer_cli"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "code: unknown"
    return f"code: {head or 'unknown'}{' + uncommitted changes in dialer_cli/' if dirty else ''}"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"machine: {platform.platform()} | {model} | {os.cpu_count()} cores | "
        f"Python {platform.python_version()} | SQLite {sqlite3.sqlite_version} | "
        f"load average {os.getloadavg()[0]:.2f} (shared machine: other work perturbs timings)"
    )


def header(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)
    print(machine(), flush=True)
    print(code_version(), flush=True)


def verdict(name: str, value: str, target: str, ok: bool | None) -> None:
    mark = "INFO" if ok is None else "PASS" if ok else "MISS"
    print(f"  [{mark}] {name}: {value}  (target: {target})", flush=True)


def note(text: str) -> None:
    print(f"  {text}", flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rss_mb() -> float:
    """This process's resident set size now (MB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Timed:
    wall: float
    peak_mb: float
    code: int
    out: str


def timed(args: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Timed:
    """Run a command; its wall time, and the peak RSS of that child alone (wait4's rusage)."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-out-{os.getpid()}.txt"
    with open(out_path, "w+b") as out:
        began = time.perf_counter()
        proc = subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd or ROOT
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    out_path.unlink(missing_ok=True)
    return Timed(wall, usage.ru_maxrss / 1024, proc.returncode, text)


def clean_env(home: Path) -> dict[str, str]:
    """The environment for a dialer subprocess: no DIALER_/TWILIO_ settings, config and data in
    a scratch directory, the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIALER_", "TWILIO_"))}
    env["XDG_CONFIG_HOME"] = str(home / "config")
    env["XDG_DATA_HOME"] = str(home / "data")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


# -- numbers and leads ---------------------------------------------------------------------------


def e164_numbers(n: int, seed: int = 1) -> list[str]:
    """n distinct valid-looking NANP numbers (+1 NPA NXX XXXX in real area codes)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        exchange = str(rng.randint(200, 999))
        if exchange in BAD_EXCHANGES or exchange[1:] == "11":
            continue
        number = f"+1{rng.choice(AREA_CODES)}{exchange}{rng.randint(0, 9999):04d}"
        if number not in seen:
            seen.add(number)
            out.append(number)
    return out


def make_leads(numbers: Sequence[str]) -> Iterator[Any]:
    from dialer_cli.models import Lead

    for i, number in enumerate(numbers):
        yield Lead(
            line=i + 2, phone=number, e164=number, fields={"name": f"Lead {i}", "phone": number}
        )


# -- the simulator in its own process ------------------------------------------------------------


def uniform_plan(mean_s: float, seed: int = 0) -> Callable[[str, int], Any]:
    """Every call answered, its length (in simulated seconds) drawn uniformly from
    [0.5, 1.5] x mean per (seed, number): known lengths, the same on every rerun."""
    from dialer_cli.simulator import CallPlan

    def plan(to: str, nth: int) -> Any:
        total = random.Random(f"{seed}:{to}:{nth}").uniform(0.5 * mean_s, 1.5 * mean_s)
        return CallPlan("completed", queue_s=0.05 * total, ring_s=0.25 * total, talk_s=0.7 * total)

    return plan


@dataclass(frozen=True)
class Ledger:
    """The simulator's record, reduced: calls as (created_at, ended_at) in creation order, and
    requests as (kind, at) with kind create / fetch / list / update / other."""

    calls: list[tuple[float, float]]
    requests: list[tuple[str, float]]
    cpu: float  # CPU seconds the simulator process used

    def count(self, kind: str) -> int:
        return sum(1 for k, _ in self.requests if k == kind)


def _kind(method: str, path: str) -> str:
    if path.endswith("/Calls.json"):
        return "create" if method == "POST" else "list"
    if "/Calls/" in path:
        return "update" if method == "POST" else "fetch"
    return "other"


def _serve(
    conn: Any, speed: float, plan: Callable[[str, int], Any] | None, seed: int, faults: Any
) -> None:
    from dialer_cli.simulator import Simulator

    with Simulator(speed=speed, plan=plan, seed=seed, faults=faults) as sim:
        conn.send(sim.url)
        while True:
            command = conn.recv()
            if command == "ledger":
                calls = [(c.created_at, c.ended_at(speed)) for c in sim.calls()]
                requests = [(_kind(r.method, r.path), r.at) for r in sim.requests()]
                conn.send(Ledger(calls, requests, time.process_time()))
            elif command == "count":
                conn.send((len(sim.calls()), len(sim.requests())))
            else:
                return


class SimProcess:
    """The real simulator on loopback, served from a child process so its CPU is not the
    dialer's (Twilio is another machine too). Ask it for its ledger with `ledger()`.
    `faults` (a simulator.Faults) can make it slow: `Faults(p_slow=1, slow_s=0.1)` answers
    every request 100 ms late, as a Twilio a continent away would."""

    def __init__(
        self,
        speed: float,
        plan: Callable[[str, int], Any] | None = None,
        seed: int = 0,
        faults: Any = None,
    ):
        ctx = multiprocessing.get_context("fork")
        self._conn, child = ctx.Pipe()
        args = (child, speed, plan, seed, faults)
        self._proc = ctx.Process(target=_serve, args=args, daemon=True)
        self.speed = speed

    def __enter__(self) -> SimProcess:
        self._proc.start()
        self.url = self._conn.recv()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.send("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

    def ledger(self) -> Ledger:
        self._conn.send("ledger")
        return self._conn.recv()

    def count(self) -> tuple[int, int]:
        self._conn.send("count")
        return self._conn.recv()


# -- one campaign, driven in this process ---------------------------------------------------------


@dataclass
class Loop:
    """What the driving loop did: wall time of drive(), time spent asleep, per-pass busy times."""

    wall: float = 0.0
    slept: float = 0.0
    busy: list[float] = field(default_factory=list)
    status: str = ""
    cpu: float = 0.0


def campaign(
    sim: SimProcess,
    db: Path,
    n_leads: int,
    concurrency: int,
    poll_interval: float,
    *,
    seed: int = 1,
    every: float | None = None,
    sample: Callable[[float], None] | None = None,
    deadline: float | None = None,
    on_event: Callable[[Any], None] = lambda event: None,
    loop: Loop | None = None,
    should_drain: Callable[[], bool] = lambda: False,
) -> Loop:
    """Import n_leads into a fresh store at `db`, then runner.drive them through the simulator
    over HTTP with the real TwilioCalls adapter, exactly as `dialer start --simulate` would
    (dialing.poll_interval is in simulated seconds, divided by the speed). `sample(elapsed)` is
    called about every `every` seconds from the loop's sleep; with `deadline` (seconds) the run
    dials nothing new after it and ends when the calls in flight have; so it does once
    `should_drain()` is true."""
    from dialer_cli import runner
    from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN
    from dialer_cli.store import Store

    store = Store.open(db)
    run_id = store.create_run(
        source="bench.csv",
        source_key=f"bench:{db}",
        leads=make_leads(e164_numbers(n_leads, seed)),
        target=runner.SIMULATED,
        base_url=None,
        from_number=runner.SIM_FROM_NUMBER,
        concurrency=concurrency,
        settings={"dialing": {"poll_interval": poll_interval, "concurrency": concurrency}},
        now=time.time(),
    )
    target = runner.Target(
        DEFAULT_ACCOUNT_SID,
        DEFAULT_AUTH_TOKEN,
        sim.url,
        10.0,
        runner.SIM_FROM_NUMBER,
        simulated=True,
        speed=sim.speed,
    )
    loop = loop or Loop()
    mark = [time.perf_counter()]
    began = mark[0]
    next_sample = [began + every] if every else [float("inf")]

    def sleep(seconds: float) -> None:
        now = time.perf_counter()
        loop.busy.append(now - mark[0])
        if sample is not None and now >= next_sample[0]:
            sample(now - began)
            next_sample[0] += every or 0
        time.sleep(seconds)
        mark[0] = time.perf_counter()
        loop.slept += mark[0] - now

    cpu0 = time.process_time()
    loop.status = runner.drive(
        store,
        run_id,
        target,
        on_event=on_event,
        should_drain=should_drain,
        sleep=sleep,
        deadline=None if deadline is None else time.time() + deadline,
    )
    loop.wall = time.perf_counter() - began
    loop.cpu = time.process_time() - cpu0
    store.close()
    return loop


def ideal_makespan(durations: Sequence[float], lines: int) -> float:
    """The calls list-scheduled on `lines` lines in the given order with no gap at all."""
    free = [0.0] * lines
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        end = max(end, start + d)
        heapq.heappush(free, start + d)
    return end


def refill_gaps(ledger: Ledger, lines: int) -> list[float]:
    """Per freed line, the time from the k-th call end to the (lines+k)-th create request
    (the create that refilled it), over the calls that had a successor."""
    ends = sorted(e for _, e in ledger.calls)
    creates = sorted(at for kind, at in ledger.requests if kind == "create")
    return [creates[lines + k] - end for k, end in enumerate(ends) if lines + k < len(creates)]


@contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("BENCH_TMP")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
