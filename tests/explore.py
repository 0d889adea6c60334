"""The explorer: seeded random scenarios of real `dialer` processes against the simulator, judged
only from the simulator's ledger and the database. Used by `bench/explore.py` (many scenarios)
and `tests/test_explore.py` (a short pass in the suite).

One scenario = one seed. The seed draws a plan (only the plan replays exactly; the interleaving
of the processes is real time): one to three runs on one database and one account, each
with its own N; calling hours that open or close during the scenario; retries; Twilio's faults
(429, 500, lost and held create responses, unreachable for a while, its clock offset from ours);
process faults (SIGKILL, SIGSTOP past the heartbeat, SIGINT, SIGTERM); and the commands `start`
(twice at once), `resume`, `stop [--cancel-active]`, `status`, `cleanup-stuck`, with the database
path spelled absolute, relative, `d/../a.db`-style or through a symlink.

Every dialer process runs through `tests/clock_entry.py`, so they and the simulator share one
clock running SPEED times faster than real time: an hour boundary passes in seconds and the
heartbeat's 60 s staleness in one second. Call plans, poll interval, grace and retry delays are in
that clock; process bounds are in real seconds.

The promises judged, each violation one line naming the promise, the run, the number or process:
- `double-dial`: no number is called while a call to it is live, nor after one was answered, nor
  more than max_attempts times;
- `concurrency`: when one of our runs creates a call, the account's live calls do not exceed the
  smallest N among that run and the runs being dialled at that moment;
- `hours`: no call is claimed outside its lead's calling hours (the lead's zones computed here),
  nor arrives at Twilio outside them beyond real-time latency;
- `lost`: after a final resume of every run, every lead is answered, failed with a reason,
  skipped with a reason, needs_review, or waits for a calling window that is closed now;
- `bound`: every process ends within its bound after a stop, a drain or a deadline (BOUND_MARGIN
  + http_timeout + poll + grace + the calls still live then; strict while Twilio is unreachable);
- `drain`: nothing is dialled after SIGINT/SIGTERM beyond the create of the claim in progress;
- `one-driver`: two starts of one source make one run; a resume while another process drives the
  run (however the path is spelled) exits 4;
- `exit`: exit codes are documented (0 1 2 3 4 130, -9 for our SIGKILL), no traceback, and no
  command reports success about a Twilio it could not reach.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import time
import urllib.parse
import urllib.request
from base64 import b64encode
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from dialer_cli.simulator import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    CallPlan,
    Faults,
    SimCall,
    Simulator,
)
from tests.clock_entry import ENV as CLOCK_ENV
from tests.conftest import FROM, ROOT
from tests.test_crash import Proc, child_env

SPEED = 60.0  # shared clock seconds per real second: a minute of calling hours per second
POLL = 1.2  # dialing.poll_interval, clock s (20 ms real)
GRACE = 6.0  # dialing.reconcile_grace, clock s (100 ms real)
RETRY_DELAY = 30.0  # dialing.retry_delay, clock s (0.5 s real)
STOP_WAIT = 1.0  # real s a `dialer stop` may take while its driver is SIGSTOPped
HTTP_TIMEOUT = 2.0  # twilio.http_timeout, real s (the socket timeout is not on our clock)
BOUND_MARGIN = 4.0  # real s: Python start-up and exit on a loaded 2-core machine
# (SIGSTOP lasts 1.3-1.7 s real: past the heartbeat's 60 s staleness in the shared clock)
LONGEST_CALL = 1.2  # real s: the longest call a plan makes (a claim in progress at a stop)
NATURAL_CAP = 15.0  # real s a driver may take to finish on its own before we SIGTERM it
IDLE_CAP = 1.5  # real s without a call created or ended at Twilio: the drivers wait for nothing
FINAL_CAP = 30.0  # real s a final resume may take
DUPLICATES = 10000  # rows repeating a number (skipped) in a file two starts import at once
DOCUMENTED = {0, 1, 2, 3, 4, 130}
KILLED = -signal.SIGKILL
FOUND_SLACK = 0.5 * SPEED  # clock s from the pass that found a foreign call to its commit
CLAIM_SLACK = 2.0  # clock s around a window's edge for a claim (Twilio's 1 s date resolution)
SEND_SLACK = 3.0 * SPEED  # clock s from a pass's hours check to a create's arrival (a create
# held up to http_timeout, then the pass's other creates): real-time latency, 60× in our clock
DRAIN_SLACK = 0.05  # real s for a signal to reach its process
ZONES = ("", "America/New_York", "America/Chicago", "America/Los_Angeles", "Europe/London")
NUMBER_ZONE = "America/New_York"  # the zone of +1 212 numbers (the leads' numbers here)
STARTED = re.compile(r"^(\S+Z) run (\d+) started", re.M)  # the LineView's run-started line
FINISHED = re.compile(r"^(\S+Z) run \d+ (?:stopped|completed|failed)$", re.M)  # run-finished
DAY = datetime(2026, 12, 2)  # a Wednesday: calling_days stay at their default (every day)


# -- the shared clock ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clock:
    """Shared time = base + (real - real0) × speed, in this process and in every child."""

    base: float
    real0: float
    speed: float = SPEED

    def now(self) -> float:
        return self.shared(time.time())

    def shared(self, real: float) -> float:
        return self.base + (real - self.real0) * self.speed

    def spec(self) -> str:
        return f"{self.base!r} {self.real0!r} {self.speed!r}"


# -- the plan a seed draws ------------------------------------------------------------------------


@dataclass
class RunPlan:
    index: int
    leads: int
    zones: list[str]  # each lead's timezone column ("" = none: its number's zone)
    concurrency: int
    max_attempts: int
    start_twice: bool  # two `start`s of this source at once
    start_flags: list[str]
    first_number: int
    delayed: bool = False  # started by a step (while Twilio is unreachable), not at launch

    def numbers(self) -> list[str]:
        return [f"+1212555{self.first_number + i:04d}" for i in range(self.leads)]


@dataclass
class Step:
    kind: str
    run: int
    delay: float  # real s after the previous step
    args: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.args.items())
        return f"+{self.delay:.2f}s {self.kind} run#{self.run} {extra}".rstrip()


@dataclass
class Plan:
    seed: int
    offset: float  # Twilio's clock minus ours, clock s
    hours: str | None  # dialing.calling_hours
    base: float  # shared epoch at the scenario's start
    runs: list[RunPlan]
    steps: list[Step]

    def describe(self) -> list[str]:
        lines = [f"seed {self.seed}: Twilio clock offset {self.offset:+.0f} s, hours {self.hours}"]
        start = datetime.fromtimestamp(self.base, ZoneInfo(NUMBER_ZONE))
        lines.append(f"  shared clock starts {start:%H:%M:%S} New York, x{SPEED:g}")
        for r in self.runs:
            lines.append(
                f"  run#{r.index}: {r.leads} leads, N={r.concurrency}, max_attempts "
                f"{r.max_attempts}, start twice {r.start_twice}, flags {r.start_flags}"
                + (" (started by a step)" if r.delayed else "")
            )
        lines += [f"  {s}" for s in self.steps]
        return lines


STEP_KINDS = (
    "faults", "hold", "hold-drain", "down", "down-stop", "kill", "sigstop", "drain", "stop",
    "status", "resume-busy", "foreign", "cleanup-down",
)  # fmt: skip


def draw(seed: int) -> Plan:
    """Everything random about a scenario comes from here, so a seed replays the same plan."""
    rng = random.Random(seed)
    offset = rng.choice([0.0, 0.0, 0.0, 2.0, -4.0, 30.0, -30.0, 90.0, -90.0])
    hours, base = None, _epoch(rng.randint(10, 17), 0) - rng.uniform(5, 600)
    if rng.random() < 0.4:
        boundary = rng.randint(10, 17)
        base = _epoch(boundary, 0) - rng.uniform(40, 120)  # the edge passes 0.7-2 s in
        hours = f"08:00-{boundary:02d}:00" if rng.random() < 0.6 else f"{boundary:02d}:00-23:00"
    runs = []
    for i in range(rng.choice([1, 1, 2, 2, 3])):
        n = rng.randint(1, 5)
        leads = rng.randint(max(4, n), min(20, 3 * n + 4))
        flags = []
        if hours is not None:
            flags = ["--no-wait"] if rng.random() < 0.5 else ["--max-duration", "4m"]
        elif rng.random() < 0.25:
            flags = ["--max-duration", f"{rng.randint(30, 150)}s"]
        # Leads in the zone whose window opens or closes first: they are all claimed in the
        # first passes, so a resume mid-run finds none of that zone queued (issue 10, item 3).
        zones = sorted((rng.choice(ZONES) if hours else "" for _ in range(leads)), key=_edge_last)
        runs.append(
            RunPlan(
                index=i, leads=leads, zones=zones, concurrency=n,
                max_attempts=rng.choice([2, 3] if hours else [1, 1, 2, 3]),
                start_twice=rng.random() < 0.3,
                start_flags=flags, first_number=100 + 100 * i,
            )
        )  # fmt: skip
    if len(runs) == 3:
        runs[2].delayed, runs[2].leads, runs[2].zones = True, 3, runs[2].zones[:3]
        runs[2].start_twice = False
    steps = []
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(STEP_KINDS)
        target = rng.randrange(min(len(runs), 2))
        early = kind == "hold-drain" and not steps  # held before the first pass fills N slots
        delay = rng.uniform(0.0, 0.3) if early else rng.uniform(0.15, 0.9)
        steps.append(Step(kind, target, delay, _step_args(kind, rng)))
    if hours is not None and not any(s.kind == "kill" for s in steps) and rng.random() < 0.5:
        # A new driver while the first leads are in flight and their window is about to close.
        args = {**_step_args("kill", rng), "resume": True}
        steps.insert(0, Step("kill", 0, rng.uniform(0.4, 0.8), args))
    if len(runs) == 3:
        steps.insert(rng.randint(0, len(steps)), Step("start-down", 2, rng.uniform(0.1, 0.5)))
    return Plan(seed, offset, hours, base, runs, steps)


def _edge_last(zone: str) -> bool:
    """Sort key: leads of NUMBER_ZONE (where the window's edge passes) first."""
    return zone not in ("", NUMBER_ZONE)


def _epoch(hour: int, minute: int) -> float:
    return DAY.replace(hour=hour, minute=minute, tzinfo=ZoneInfo(NUMBER_ZONE)).timestamp()


def _step_args(kind: str, rng: random.Random) -> dict[str, Any]:
    spelling = rng.choice(SPELLINGS)
    if kind == "faults":
        return {
            "p_429": rng.choice([0.0, 0.2, 0.5]), "p_500": rng.choice([0.0, 0.1, 0.3]),
            "p_drop": rng.choice([0.0, 0.3, 0.6]), "p_500_after_create": rng.choice([0.0, 0.3]),
            "for": round(rng.uniform(0.3, 1.5), 2), "seed": rng.randrange(1000),
        }  # fmt: skip
    if kind in ("hold", "hold-drain"):
        return {"for": round(rng.uniform(0.2, 2.6), 2), "signal": rng.choice(["INT", "TERM"])}
    if kind == "down":
        return {"for": round(rng.uniform(0.3, 2.0), 2)}
    if kind == "down-stop":
        return {"how": rng.choice(["stop", "TERM", "INT"]), "spelling": spelling}
    if kind == "kill":
        return {
            "cleanup": rng.random() < 0.5, "resume": rng.random() < 0.7, "spelling": spelling,
            "concurrency": rng.choice([None, None, 1, 2, 9]),
        }  # fmt: skip
    if kind == "sigstop":
        return {
            "for": round(rng.uniform(1.3, 1.7), 2), "stop": rng.random() < 0.6,
            "resume": rng.random() < 0.4, "spelling": spelling,
        }  # fmt: skip
    if kind == "drain":
        return {"signal": rng.choice(["INT", "TERM"])}
    if kind == "stop":
        return {"cancel": rng.random() < 0.4, "spelling": spelling}
    if kind in ("status", "resume-busy", "cleanup-down"):
        return {"spelling": spelling}
    return {}


# -- the database path, spelled in different ways ------------------------------------------------

SPELLINGS = ("absolute", "relative", "dotdot", "symlink")


def spell(directory: Path, how: str) -> str:
    """One database file, named four ways: the one-driver lock must not care which."""
    db = directory / "a.db"
    if how == "relative":
        return os.path.relpath(db, ROOT)
    if how == "dotdot":
        return str(directory / "d" / ".." / "a.db")
    if how == "symlink":
        return str(directory / "link.db")
    return str(db)


# -- one scenario ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """From `began` (real time), a process must end within `budget` seconds. Unless `strict`,
    the count starts again when a fault (held creates, Twilio unreachable) is cleared."""

    began: float
    budget: float
    why: str
    strict: bool = False


@dataclass
class Job:
    """A dialer process of the scenario and what we expect of it."""

    proc: Proc
    what: str
    kind: str  # the dialer command
    run: int | None = None
    bound: Bound | None = None
    killed_by_us: bool = False
    paused: bool = False
    drained_at: float | None = None  # real time of our SIGINT/SIGTERM
    early: int | None = None  # a SIGINT/SIGTERM sent before the process said it was dialling
    deadline: float | None = None  # real time its --max-duration passes
    ended_at: float | None = None
    checked: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


class Scenario:
    """Plays one Plan and judges it. `violations` holds one line per broken promise."""

    def __init__(self, plan: Plan, directory: Path, say: Callable[[str], None] = lambda _: None):
        self.plan, self.dir, self.say = plan, directory, say
        self.violations: list[str] = []
        self.notes: list[str] = []  # what happened that is no broken promise (verbose output)
        self.jobs: list[Job] = []
        self.run_ids: dict[int, int] = {}  # plan run index -> run id
        self.max_n: dict[int, int] = {r.index: r.concurrency for r in plan.runs}
        self.long: set[str] = set()  # numbers whose calls talk long (review candidates)
        self.foreign: set[str] = set()  # SIDs created by "someone else" on the account
        self.faults_until = 0.0  # real time the last fault was cleared
        self.faulty = 0  # faults in force now (hold, down)
        self.pauses: list[tuple[int, float, float]] = []  # (run index, SIGSTOP, SIGCONT) real
        self.real0 = time.time()
        self.clock = Clock(plan.base, self.real0)
        self.spawned = 0
        self.sim = Simulator(clock=lambda: self.clock.now() + plan.offset, plan=self._call_plan)

    # -- setup ----------------------------------------------------------------------------------

    def _call_plan(self, to: str, nth: int) -> CallPlan:
        """Calls of a few to a few dozen clock seconds (under a second real), fixed per seed."""
        rng = random.Random(f"{self.plan.seed}:{to}:{nth}")
        if to in self.long:
            return CallPlan("completed", queue_s=1.0, ring_s=3.0, talk_s=60.0)
        x = rng.random()
        outcome = "completed" if x < 0.55 else "busy" if x < 0.75 else "no-answer"
        outcome = "failed" if x > 0.95 else outcome
        queue, ring, talk = rng.uniform(0.5, 3), rng.uniform(3, 15), rng.uniform(5, 25)
        if outcome == "no-answer":  # rings until Twilio's timeout: the longest unanswered calls
            ring = rng.uniform(20, 60)
        return CallPlan(outcome, queue_s=queue, ring_s=ring, talk_s=talk)

    def _write_files(self) -> None:
        (self.dir / "d").mkdir(parents=True, exist_ok=True)
        (self.dir / "link.db").symlink_to("a.db")
        for r in self.plan.runs:
            rows = [
                f"Lead {r.index}-{i},{n},{z}"
                for i, (n, z) in enumerate(zip(r.numbers(), r.zones, strict=True))
            ]
            if r.start_twice:  # a dirty file: its import takes as long as two starts' race
                rows += [f"Again {i},{r.numbers()[i % r.leads]}," for i in range(DUPLICATES)]
            self.csv(r).write_text("name,phone,timezone\n" + "\n".join(rows) + "\n")
            hours = ""
            if self.plan.hours:
                hours = f'  calling_hours: "{self.plan.hours}"\n  timezone: {NUMBER_ZONE}\n'
            self.cfg(r).write_text(
                f"twilio:\n  account_sid: {DEFAULT_ACCOUNT_SID}\n"
                f'  auth_token: {DEFAULT_AUTH_TOKEN}\n  from_number: "{FROM}"\n'
                f"  base_url: {self.sim.url}\n  http_timeout: {HTTP_TIMEOUT}\n"
                f'call:\n  twiml: "<Response><Say>Hello {{name}}</Say></Response>"\n'
                f"dialing:\n  concurrency: {r.concurrency}\n  poll_interval: {POLL}\n"
                f"  reconcile_grace: {GRACE}\n  max_attempts: {r.max_attempts}\n"
                f"  retry_on: [busy, no-answer, failed]\n  retry_delay: {RETRY_DELAY}\n{hours}"
            )

    def csv(self, r: RunPlan) -> Path:
        return self.dir / f"leads-{r.index}.csv"

    def cfg(self, r: RunPlan) -> Path:
        return self.dir / f"dialer-{r.index}.yaml"

    # -- processes ------------------------------------------------------------------------------

    def spawn(self, *args: object, what: str, run: int | None = None) -> Job:
        self.spawned += 1
        name = f"{self.spawned:02d}-{args[0]}"
        out, err = self.dir / f"{name}.out", self.dir / f"{name}.err"
        env = {**child_env(), CLOCK_ENV: self.clock.spec()}
        import subprocess
        import sys

        with out.open("w") as o, err.open("w") as e:
            popen = subprocess.Popen(
                [sys.executable, "-m", "tests.clock_entry", *map(str, args)],
                stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=env, cwd=ROOT,
            )  # fmt: skip
        job = Job(Proc(popen, f"{what} (pid {popen.pid})", out, err), what, str(args[0]), run)
        if "--max-duration" in args:
            duration = str(args[args.index("--max-duration") + 1])
            seconds = float(duration[:-1]) * (60 if duration.endswith("m") else 1)
            job.deadline = time.time() + seconds / SPEED
        self.jobs.append(job)
        self.say(f"  {time.time() - self.real0:5.2f}s spawn {job.proc.name}")
        return job

    def start(self, r: RunPlan, spelling: str) -> Job:
        db = spell(self.dir, spelling)
        return self.spawn(
            "start", self.csv(r), "--config", self.cfg(r), "--db", db, "--yes", *r.start_flags,
            what=f"start run#{r.index} --db {spelling}", run=r.index,
        )  # fmt: skip

    def resume(self, r: RunPlan, spelling: str, *flags: object) -> Job | None:
        run_id = self.run_id(r.index)
        if run_id is None:
            return None
        return self.spawn(
            "resume", run_id, "--config", self.cfg(r), "--db", spell(self.dir, spelling), *flags,
            what=f"resume run#{r.index} (run {run_id}) --db {spelling} {shown(flags)}".rstrip(),
            run=r.index,
        )  # fmt: skip

    def command(self, r: RunPlan, name: str, spelling: str, *args: object) -> Job:
        return self.spawn(
            *name.split(), *args, "--db", spell(self.dir, spelling),
            what=f"{name} run#{r.index} --db {spelling} {shown(args)}".rstrip(), run=r.index,
        )  # fmt: skip

    def driver(self, index: int) -> Job | None:
        """Our process that drives the run now (the database names its pid)."""
        run_id = self.run_id(index)
        if run_id is None:
            return None
        rows = self.rows("SELECT owner_pid FROM runs WHERE id=?", (run_id,))
        pid = rows[0]["owner_pid"] if rows else None
        return next((j for j in self.jobs if j.pid == pid and j.alive()), None)

    def wait_driver(self, index: int, timeout: float = 3.0) -> Job | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if (job := self.driver(index)) is not None:
                return job
            if not any(j.alive() and j.run == index for j in self.jobs):
                return None
            self.pause(0.02)
        return None

    def run_id(self, index: int) -> int | None:
        if index not in self.run_ids:
            name = self.csv(self.plan.runs[index]).name
            rows = self.rows("SELECT id, source FROM runs WHERE status != 'importing' ORDER BY id")
            ids = [r["id"] for r in rows if str(r["source"]).endswith(name)]  # a run being
            # imported is no run yet: `dialer` itself shows it to nobody until its last lead is in
            if ids:
                self.run_ids[index] = ids[0]
        return self.run_ids.get(index)

    def signal(self, job: Job, sig: signal.Signals) -> None:
        if job.alive():
            text = job.proc.err.read_text(errors="replace") if job.proc.err.exists() else ""
            if sig in (signal.SIGINT, signal.SIGTERM) and not STARTED.search(text):
                # Still starting up or importing: the default action (the OS ends it, and the
                # import's transaction never commits) is the answer, not a drain.
                job.early = -sig
            os.kill(job.pid, sig)
            self.say(f"  {time.time() - self.real0:5.2f}s {sig.name} -> {job.proc.name}")

    def drain(self, job: Job, sig: signal.Signals, why: str) -> None:
        job.drained_at = time.time()
        self.signal(job, sig)
        self.bound(job, f"{why} ({sig.name})")

    def bound(self, job: Job, why: str, strict: bool = False, budget: float | None = None) -> None:
        """From now, `job` must end within the budget: by default the calls of its run still
        live at Twilio, a claim in progress, an HTTP timeout, a poll, two grace periods and
        the start-up margin. A tighter bound replaces a looser one."""
        if budget is None:
            budget = BOUND_MARGIN + HTTP_TIMEOUT + (POLL + 2 * GRACE) / SPEED + LONGEST_CALL
            budget += self.remaining_calls(job.run)
        now = time.time()
        if job.bound is None or job.bound.began + job.bound.budget > now + budget:
            job.bound = Bound(now, budget, why, strict)

    def remaining_calls(self, index: int | None) -> float:
        """Real seconds until the last live call of the run ends at Twilio."""
        if index is None:
            return 0.0
        mine = set(self.plan.runs[index].numbers())
        now = self.sim.clock()
        ends = [c.ended_at(1.0) for c in self.sim.calls() if c.to in mine]
        return max([0.0, *((e - now) / SPEED for e in ends)])

    def tend(self) -> None:
        """Enforce the bounds: a process past its bound is a violation, and is killed."""
        now = time.time()
        for job in self.jobs:
            if job.ended_at is None and not job.alive():
                job.ended_at = now
            if job.bound is None and job.deadline is not None and now >= job.deadline:
                self.bound(job, "its --max-duration deadline")
            if job.bound is None or not job.alive() or job.paused:
                continue
            b, began = job.bound, job.bound.began
            if not b.strict:
                if self.faulty:
                    continue
                began = max(began, self.faults_until)
            if now > began + b.budget:
                after = "" if b.strict else " after faults cleared"
                self.violate(
                    "bound", f"{job.proc.name} still running {now - b.began:.1f} s after "
                    f"{b.why} (bound {b.budget:.1f} s{after}); killed",
                )  # fmt: skip
                job.killed_by_us = True
                job.proc.kill()
                job.ended_at = time.time()

    def pause(self, seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            self.tend()
            time.sleep(0.02)

    def wait_exit(self, job: Job, cap: float) -> int | None:
        end = time.time() + cap
        while job.alive() and time.time() < end:
            self.pause(0.02)
        return job.proc.poll()

    def violate(self, promise: str, text: str) -> None:
        line = f"[{promise}] {text}"
        self.violations.append(line)
        self.say(f"  VIOLATION {line}")

    # -- faults ---------------------------------------------------------------------------------

    @contextmanager
    def fault(self) -> Iterator[None]:
        self.faulty += 1
        try:
            yield
        finally:
            self.faulty -= 1
            self.faults_until = time.time()

    def foreign_call(self, to: str) -> None:
        """Someone else on the account dials `to` from our number (another tool, a colleague)."""
        body = urllib.parse.urlencode({"To": to, "From": FROM, "Twiml": "<Response/>"}).encode()
        auth = b64encode(f"{DEFAULT_ACCOUNT_SID}:{DEFAULT_AUTH_TOKEN}".encode()).decode()
        url = f"{self.sim.url}/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}/Calls.json"
        request = urllib.request.Request(url, body, {"Authorization": f"Basic {auth}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            self.foreign.add(json.load(response)["sid"])

    # -- the database, read-only ----------------------------------------------------------------

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        db = self.dir / "a.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    # -- playing --------------------------------------------------------------------------------

    def play(self) -> list[str]:
        with self.sim:
            try:
                self._write_files()
                for r in self.plan.runs:
                    if not r.delayed:
                        rng = random.Random(f"{self.plan.seed}:{r.index}")
                        self.start(r, rng.choice(SPELLINGS))
                        if r.start_twice:
                            self.start(r, rng.choice(SPELLINGS))
                for step in self.plan.steps:
                    self.pause(step.delay)
                    self.say(f"  {time.time() - self.real0:5.2f}s step {step}")
                    act = getattr(self, "step_" + step.kind.replace("-", "_"))
                    act(self.plan.runs[step.run], step.args)
                self.settle()
                self.finish()
                self.judge()
                self.check_processes()
            finally:  # whatever went wrong here, no process of ours outlives its scenario
                for job in self.jobs:
                    if job.alive():
                        job.proc.kill()
        for note in self.notes:
            self.say(f"  note: {note}")
        return self.violations

    def settle(self) -> None:
        """Let every process end on its own. A driver is drained (and then bounded) once nothing
        has happened at Twilio for IDLE_CAP seconds (a run whose slots another run's unsettled
        attempts hold waits for that run's resume), or after NATURAL_CAP in any case."""
        end = time.time() + NATURAL_CAP
        while any(j.alive() for j in self.jobs):
            idle = self.idle_for()
            if time.time() < end and idle < IDLE_CAP:
                self.pause(0.05)
                continue
            for job in self.jobs:
                if job.alive() and job.bound is None:
                    why = f"idle {idle:.1f} s" if idle >= IDLE_CAP else f"running {NATURAL_CAP} s"
                    self.say(f"  {job.proc.name}: nothing at Twilio, {why}: SIGTERM")
                    self.notes.append(f"{job.proc.name} drained after {why}")
                    self.drain(job, signal.SIGTERM, f"SIGTERM after {why}")
            self.pause(0.05)

    def idle_for(self) -> float:
        """Real seconds since a call was created or ended at Twilio (0 while one is live)."""
        now = self.sim.clock()
        calls = self.sim.calls()
        if any(c.created_at <= now < c.ended_at(1.0) for c in calls):
            return 0.0
        moments = [c.created_at for c in calls] + [c.ended_at(1.0) for c in calls]
        began = self.clock.shared(self.real0) + self.plan.offset  # in Twilio's clock, as `now`
        last = max([m for m in moments if m <= now], default=began)
        since_fault = time.time() - self.faults_until if self.faults_until else 1e9
        return min((now - last) / SPEED, since_fault, 0.0 if self.faulty else 1e9)

    def finish(self) -> None:
        """A final resume of every unfinished run, all at once (a run whose slots are held by
        another run's unsettled attempts waits for that run's resume), repeated until each run
        completes or only leads whose window is closed remain."""
        for _ in range(8):
            todo = [r for r in self.plan.runs if self.unfinished(r)]
            again = [r for r in self.plan.runs if self.import_died(r)]
            if not todo and not again:
                return
            flags = ["--no-wait"] if self.plan.hours else []
            if flags:  # a resume --no-wait exits 3 while a retry waits: let the retry come due
                due = self.rows("SELECT min(next_at) AS t FROM jobs WHERE wait='retry'")[0]["t"]
                self.pause(min(max(((due or 0) - self.clock.now()) / SPEED, 0.0), 2.0))
            jobs = [job for r in todo if (job := self.resume(r, "absolute", *flags))]
            jobs += [self.start(r, "absolute") for r in again]  # it removes the dead import
            end = time.time() + FINAL_CAP
            while any(j.alive() for j in jobs) and time.time() < end:
                self.pause(0.02)
            for job in jobs:
                if job.alive():
                    self.violate("bound", f"final {job.proc.name} did not finish in {FINAL_CAP} s")
                    job.killed_by_us = True
                    job.proc.kill()
            if any(j.proc.poll() not in (0, 3) for j in jobs):
                return

    def import_died(self, r: RunPlan) -> bool:
        """The source's import never finished (its importer was killed or signalled while the
        run was still `importing`): it has no run, and the user's next step is `start` again,
        which removes the dead import and imports anew."""
        if self.run_id(r.index) is not None:
            return False
        rows = self.rows("SELECT source FROM runs WHERE status = 'importing'")
        return any(str(x["source"]).endswith(self.csv(r).name) for x in rows)

    def unfinished(self, r: RunPlan) -> bool:
        run_id = self.run_id(r.index)
        if run_id is None or self.run_status(run_id) == "completed":
            return False
        return bool(self.left(r))

    def run_status(self, run_id: int) -> str | None:
        rows = self.rows("SELECT status FROM runs WHERE id=?", (run_id,))
        return rows[0]["status"] if rows else None

    def left(self, r: RunPlan) -> list[dict[str, Any]]:
        """Leads of the run not yet settled, except those whose calling window is closed now."""
        run_id = self.run_id(r.index)
        rows = self.rows(
            "SELECT e164, state, outcome, skip_reason, fields FROM jobs WHERE run_id=?", (run_id,)
        )
        zones = dict(zip(r.numbers(), r.zones, strict=True))
        now = self.clock.now()
        return [
            row
            for row in rows
            if not settled(row)
            and not (row["state"] == "queued" and not self.open_at(zones.get(row["e164"], ""), now))
        ]

    # -- steps ----------------------------------------------------------------------------------

    def step_faults(self, r: RunPlan, a: dict[str, Any]) -> None:
        keys = ("p_429", "p_500", "p_drop", "p_500_after_create", "seed")
        with self.fault():
            self.sim.faults = Faults(**{k: a[k] for k in keys})
            self.pause(a["for"])
            self.sim.faults = Faults()

    def step_hold(self, r: RunPlan, a: dict[str, Any], drain: bool = False) -> None:
        """Hold create responses (past http_timeout when `for` > 2 s); with `drain`, signal the
        driver while a create is held: the rest of that pass must claim nothing."""
        job = self.wait_driver(r.index)
        with self.fault():
            self.sim.hold_creates()
            try:
                held = self.sim.wait_held(1, timeout=2.0)
                if drain and held and job is not None and job.alive():
                    self.drain(job, signal.Signals["SIG" + a["signal"]], "drain, a create held")
                self.pause(a["for"])
            finally:
                self.sim.release_creates()

    def step_hold_drain(self, r: RunPlan, a: dict[str, Any]) -> None:
        self.step_hold(r, a, drain=True)

    def step_down(self, r: RunPlan, a: dict[str, Any]) -> None:
        with self.fault():
            self.sim.go_down()
            try:
                self.pause(a["for"])
            finally:
                self.sim.come_up()

    def step_down_stop(self, r: RunPlan, a: dict[str, Any]) -> None:
        """Twilio unreachable, then a stop or a drain: the driver must end within http_timeout +
        one poll (+ start-up margin), leaving unknown attempts for resume."""
        job = self.wait_driver(r.index)
        if job is None:
            return
        budget = BOUND_MARGIN + HTTP_TIMEOUT + POLL / SPEED
        with self.fault():
            self.sim.go_down()
            try:
                self.pause(0.2)
                if a["how"] == "stop":
                    stop = self.command(r, "stop", a["spelling"], self.run_id(r.index))
                    self.bound(job, "`dialer stop` while Twilio is unreachable", True, budget)
                    self.wait_exit(stop, 10)
                else:
                    job.drained_at = time.time()
                    self.signal(job, signal.Signals["SIG" + a["how"]])
                    self.bound(job, f"SIG{a['how']} while Twilio is unreachable", True, budget)
                self.wait_exit(job, budget + 0.5)
            finally:
                self.sim.come_up()

    def step_kill(self, r: RunPlan, a: dict[str, Any]) -> None:
        job = self.wait_driver(r.index)
        if job is None:
            return
        job.killed_by_us = True
        job.proc.kill()
        if a["cleanup"]:
            cleanup = self.command(r, "cleanup-stuck", a["spelling"], "--run", self.run_id(r.index),
                                   "--config", self.cfg(r))  # fmt: skip
            self.bound(cleanup, "cleanup-stuck", budget=BOUND_MARGIN + 2 * HTTP_TIMEOUT + 1)
            self.wait_exit(cleanup, 20)
        if a["resume"]:
            flags: list[object] = []
            if a["concurrency"]:
                flags = ["--concurrency", a["concurrency"]]
                self.max_n[r.index] = max(self.max_n[r.index], a["concurrency"])
            if self.plan.hours:  # the windows may close for a day: a deadline, not --no-wait
                flags += ["--max-duration", "4m"]
            self.resume(r, a["spelling"], *flags)

    def step_sigstop(self, r: RunPlan, a: dict[str, Any]) -> None:
        """SIGSTOP the driver past the heartbeat's staleness; meanwhile maybe `stop` (it must
        not think the driver dead while its lock is held) and a `resume` (it must exit 4)."""
        job = self.wait_driver(r.index)
        if job is None:
            return
        job.paused, paused_at = True, time.time()
        self.signal(job, signal.SIGSTOP)
        stop = None
        try:
            self.pause(a["for"])
            if a["resume"]:
                self.resume_busy(r, job, a["spelling"])
            if a["stop"]:
                stop = self.command(r, "stop", a["spelling"], self.run_id(r.index))
                # `stop` needs no live driver; but a driver stopped inside a write transaction
                # holds SQLite's lock, and then `stop` waits for it: never longer than planned.
                self.wait_exit(stop, STOP_WAIT)
        finally:
            self.signal(job, signal.SIGCONT)
            job.paused = False
            self.pauses.append((r.index, paused_at, time.time()))
        if stop is not None:
            self.bound(stop, "`dialer stop`, its driver awake again")
            self.bound(job, "`dialer stop` of a driver stopped past its heartbeat, then SIGCONT")

    def step_drain(self, r: RunPlan, a: dict[str, Any]) -> None:
        job = self.wait_driver(r.index)
        if job is not None:
            self.drain(job, signal.Signals["SIG" + a["signal"]], "drain")

    def step_stop(self, r: RunPlan, a: dict[str, Any]) -> None:
        job = self.wait_driver(r.index)
        if job is None:
            return
        flags = ["--cancel-active", "--config", self.cfg(r)] if a["cancel"] else []
        stop = self.command(r, "stop", a["spelling"], self.run_id(r.index), *flags)
        self.bound(stop, "`dialer stop`")
        self.bound(job, "`dialer stop`" + (" --cancel-active" if a["cancel"] else ""))

    def step_status(self, r: RunPlan, a: dict[str, Any]) -> None:
        run_id = self.run_id(r.index)
        if run_id is None:
            return
        job = self.command(r, "status", a["spelling"], run_id, "--json")
        rc = self.wait_exit(job, 15)
        if rc != 0:
            self.violate("exit", f"{job.proc.name} exited {rc}\n{job.proc.tail(3)}")
            return
        try:
            json.loads(job.proc.out.read_text())
        except ValueError:
            self.violate("exit", f"{job.proc.name} printed no JSON object")

    def step_resume_busy(self, r: RunPlan, a: dict[str, Any]) -> None:
        job = self.wait_driver(r.index)
        if job is not None:
            self.resume_busy(r, job, a["spelling"])

    def resume_busy(self, r: RunPlan, holder: Job, spelling: str) -> None:
        """A second resume while `holder` drives the run: one driver per run, exit 4 at once."""
        second = self.resume(r, spelling, *(["--no-wait"] if self.plan.hours else []))
        if second is None:
            return
        rc = self.wait_exit(second, 5.0)
        if rc is None and holder.alive():  # it took the run over and is dialling
            self.violate(
                "one-driver",
                f"{second.proc.name} is dialling run#{r.index} while {holder.proc.name} holds it "
                "(the lock must not depend on how the path is spelled)",
            )
            self.bound(second, "a second driver was found")
        elif rc is not None and rc != 4 and holder.alive() and not self.finished_first(second):
            self.violate(
                "one-driver",
                f"{second.proc.name} exited {rc}, not 4, while {holder.proc.name} drove the run",
            )

    @staticmethod
    def finished_first(second: Job) -> bool:
        """The driver finished the run between the resume's look and its lock (the driver's
        process may still be printing its summary): exit 2, `already completed`, is the answer."""
        err = second.proc.err.read_text(errors="replace") if second.proc.err.exists() else ""
        return second.proc.popen.returncode == 2 and "is already completed" in err

    def step_foreign(self, r: RunPlan, a: dict[str, Any]) -> None:
        """Someone else calls the next lead from our number, then the create's answer is lost:
        reconciliation finds two candidates (needs_review), both live: two slots, not one."""
        run_id = self.run_id(r.index)
        if self.wait_driver(r.index) is None or run_id is None:
            return
        rows = self.rows(
            "SELECT e164 FROM jobs WHERE run_id=? AND state='queued' AND coalesce(next_at,0)=0 "
            "ORDER BY id LIMIT 1",
            (run_id,),
        )
        if not rows:
            return
        to = rows[0]["e164"]
        self.long.add(to)
        self.foreign_call(to)
        with self.fault():
            self.sim.faults = Faults(p_drop=1.0)
            end = time.time() + 2.0
            while time.time() < end and sum(c.to == to for c in self.sim.calls()) < 2:
                self.pause(0.01)
            self.sim.faults = Faults()
        placed = sum(c.to == to for c in self.sim.calls())
        self.say(f"  foreign call to {to}; calls to it now: {placed}")

    def step_cleanup_down(self, r: RunPlan, a: dict[str, Any]) -> None:
        """`cleanup-stuck` while Twilio is unreachable must not report what it could not learn."""
        run_id = self.run_id(r.index)
        if run_id is None:
            return
        with self.fault():
            self.sim.go_down()
            try:
                job = self.command(r, "cleanup-stuck", a["spelling"], "--run", run_id,
                                   "--config", self.cfg(r))  # fmt: skip
                budget = BOUND_MARGIN + 2 * HTTP_TIMEOUT + 1
                self.bound(job, "cleanup-stuck while Twilio is unreachable", True, budget)
                rc = self.wait_exit(job, 15)
            finally:
                self.sim.come_up()
        in_flight = self.rows(
            "SELECT count(*) AS n FROM jobs WHERE run_id=? AND state IN "
            "('dialing','calling','reviewing')", (run_id,),
        )[0]["n"]  # fmt: skip
        if rc == 0 and in_flight:
            self.violate(
                "exit", f"{job.proc.name} exited 0 with {in_flight} calls in flight though Twilio "
                "was unreachable (it must say so and exit 1)",
            )  # fmt: skip

    def step_start_down(self, r: RunPlan, a: dict[str, Any]) -> None:
        """`start` while Twilio is unreachable: one line and exit 1, before writing anything."""
        with self.fault():
            self.sim.go_down()
            try:
                job = self.start(r, "absolute")
                budget = BOUND_MARGIN + 2 * HTTP_TIMEOUT
                self.bound(job, "start while Twilio is unreachable", True, budget)
                rc = self.wait_exit(job, 15)
            finally:
                self.sim.come_up()
        if rc is not None and rc != 1 and not job.killed_by_us:
            self.violate("exit", f"{job.proc.name} exited {rc} while Twilio was unreachable, not 1")
        if self.run_id(r.index) is not None:
            self.violate("exit", f"{job.proc.name} wrote run {self.run_id(r.index)} though Twilio "
                         "was unreachable (prove it answers before writing)")  # fmt: skip

    # -- the referee ----------------------------------------------------------------------------

    def open_at(self, zone_column: str, at: float) -> bool:
        """The lead's window holds at `at` (shared clock) in its zone; no hours: always."""
        if self.plan.hours is None:
            return True
        zone = zone_column or NUMBER_ZONE
        first, _, last = self.plan.hours.partition("-")
        local = datetime.fromtimestamp(at, ZoneInfo(zone))
        minute = local.hour * 60 + local.minute + local.second / 60
        lo, hi = (int(x[:2]) * 60 + int(x[3:]) for x in (first, last))
        return lo <= minute < hi

    def judge(self) -> None:
        calls = sorted(self.sim.calls(), key=lambda c: (c.created_at, c.seq))
        db_calls = self.rows("SELECT run_id, to_number, call_sid, claimed_at, result FROM calls")
        ours = {c.sid for c in calls if c.sid not in self.foreign}
        counted = ours | ({row["call_sid"] for row in db_calls} & self.foreign)
        owner = {n: r for r in self.plan.runs for n in r.numbers()}
        self.judge_numbers([c for c in calls if c.sid in ours], owner)
        found = {  # a foreign call counts from the moment the dialer found it (Twilio's clock):
            # the candidate row's claimed_at is the start of the pass that found it, and its
            # commit came up to one pass later (FOUND_SLACK)
            row["call_sid"]: row["claimed_at"] + self.plan.offset + FOUND_SLACK
            for row in db_calls
            if row["call_sid"] in self.foreign
        }
        self.judge_live([c for c in calls if c.sid in counted], owner, found)
        self.judge_hours([c for c in calls if c.sid in ours], owner, db_calls)
        self.judge_runs()
        self.judge_drains()

    def judge_numbers(self, calls: list[SimCall], owner: dict[str, RunPlan]) -> None:
        by_number: dict[str, list[SimCall]] = defaultdict(list)
        for c in calls:
            by_number[c.to].append(c)
        for to, mine in by_number.items():
            r = owner.get(to)
            if r is None:
                self.violate("double-dial", f"{to}: called, but it is no lead of any run")
                continue
            for i, later in enumerate(mine[1:], start=1):
                at = self.when(later.created_at)
                if any(later.created_at < e.ended_at(1.0) for e in mine[:i]):
                    self.violate("double-dial", f"{to} (run#{r.index}): call {later.sid} created "
                                 f"at {at} while another call to it was live")  # fmt: skip
                elif any(e.answered(1.0) for e in mine[:i]):
                    self.violate("double-dial", f"{to} (run#{r.index}): call {later.sid} created "
                                 f"at {at} after a call to it was answered")  # fmt: skip
            if len(mine) > r.max_attempts and not any(to in v for v in self.violations):
                self.violate("double-dial", f"{to} (run#{r.index}): called {len(mine)} times, "
                             f"max_attempts {r.max_attempts}")  # fmt: skip

    def judge_live(
        self, calls: list[SimCall], owner: dict[str, RunPlan], found: dict[str, float]
    ) -> None:
        """Sweep the ledger: at each of our creates, the account's calls live then must not
        exceed the smallest N among the creating run and the runs being dialled at that moment
        (each run's largest N, to be lenient about `resume --concurrency`)."""
        spans = [(found.get(c.sid, c.created_at), c.ended_at(1.0), c) for c in calls]
        spans = [s for s in spans if s[0] < s[1]]
        edges = sorted([(a, 1, c) for a, _, c in spans] + [(b, 0, c) for _, b, c in spans],
                       key=lambda e: (e[0], e[1]))  # fmt: skip
        dialling = self.dialling()
        live: set[str] = set()
        worst: tuple[int, int, float, str] | None = None
        for t, kind, c in edges:
            if kind == 0:
                live.discard(c.sid)
                continue
            live.add(c.sid)
            if c.sid in self.foreign or c.to not in owner:
                continue  # not a create of ours
            runs = {i for i, a, b in dialling if a <= t <= b} | {owner[c.to].index}
            limit = min(self.max_n[i] for i in runs)
            if len(live) > limit and (worst is None or len(live) - limit > worst[0] - worst[1]):
                ns = ", ".join(f"run#{i} N={self.max_n[i]}" for i in sorted(runs))
                worst = (len(live), limit, t, f"{c.to} of run#{owner[c.to].index}; dialling: {ns}")
        if worst is not None:
            self.violate("concurrency", f"{worst[0]} calls live at {self.when(worst[2])} after "
                         f"the create to {worst[3]}: limit {worst[1]}")  # fmt: skip

    def dialling(self) -> list[tuple[int, float, float]]:
        """(plan run index, from, until) in Twilio's clock: while one of our start or resume
        processes drove the run, from its "run N started" line (one-second resolution, so
        from the second after) until its "run N stopped/completed/failed" line or its exit,
        whichever came first (less two clock seconds: lenient both ways). A run whose driver
        has written it stopped no longer dials, though its process may take a moment to exit."""
        index_of = {
            row["id"]: r.index
            for row in self.rows("SELECT id, source FROM runs")
            for r in self.plan.runs
            if str(row["source"]).endswith(self.csv(r).name)
        }
        spans = []
        for job in self.jobs:
            if job.kind not in ("start", "resume") or not job.proc.err.exists():
                continue
            until = self.clock.shared(job.ended_at or time.time()) - 2.0 + self.plan.offset
            text = job.proc.err.read_text(errors="replace")
            for m in FINISHED.finditer(text):
                ended = datetime.fromisoformat(m[1].replace("Z", "+00:00")).timestamp()
                until = min(until, ended - 2.0 + self.plan.offset)
            for m in STARTED.finditer(text):
                began = datetime.fromisoformat(m[1].replace("Z", "+00:00")).timestamp()
                if int(m[2]) in index_of:
                    spans.append((index_of[int(m[2])], began + 1.0 + self.plan.offset, until))
        return spans

    def judge_hours(
        self, calls: list[SimCall], owner: dict[str, RunPlan], db_calls: list[dict[str, Any]]
    ) -> None:
        """Each call against its lead's window, two ways: the claim (its `claimed_at` is the
        moment the pass that claimed it checked the hours) must be inside, give or take
        CLAIM_SLACK; and the create's arrival at Twilio (in our clock) must be inside give or
        take SEND_SLACK (real-time latency, which our 60× clock magnifies). A
        create sent by a driver that was SIGSTOPped meanwhile is not held against it."""
        if self.plan.hours is None:
            return
        claimed = {row["call_sid"]: row["claimed_at"] for row in db_calls
                   if row["call_sid"] and row["result"] != "candidate"}  # fmt: skip
        for c in calls:
            r = owner.get(c.to)
            if r is None:
                continue
            zone = r.zones[r.numbers().index(c.to)]
            at = c.created_at - self.plan.offset  # Twilio's clock -> ours
            real = self.real0 + (at - self.plan.base) / SPEED
            paused = any(i == r.index and a <= real <= b + 1.0 for i, a, b in self.pauses)
            claim = claimed.get(c.sid)
            for what, t, slack in (("claimed", claim, CLAIM_SLACK), ("created", at, SEND_SLACK)):
                if t is None or (paused and what == "created"):
                    continue
                if not any(self.open_at(zone, t + d) for d in (-slack, 0, slack)):
                    local = datetime.fromtimestamp(t, ZoneInfo(zone or NUMBER_ZONE))
                    where = f"{c.to} (run#{r.index}, {zone or NUMBER_ZONE})"
                    self.violate("hours", f"{where}: {what} at {local:%H:%M:%S} local, outside "
                                 f"{self.plan.hours}")  # fmt: skip
                    break

    def judge_runs(self) -> None:
        runs = self.rows("SELECT id, source, status FROM runs WHERE status != 'importing'")
        for r in self.plan.runs:
            mine = [x for x in runs if str(x["source"]).endswith(self.csv(r).name)]
            if len(mine) > 1:
                self.violate("one-driver", f"run#{r.index}: {len(mine)} runs of one source "
                             f"({[x['id'] for x in mine]}); one start must exit 4")  # fmt: skip
            for run in mine:
                jobs = self.rows("SELECT state FROM jobs WHERE run_id=?", (run["id"],))
                dialled = [j for j in jobs if j["state"] != "skipped"]
                rows = r.leads + (DUPLICATES if r.start_twice else 0)
                if len(dialled) != r.leads or len(jobs) != rows:
                    self.violate("lost", f"run {run['id']}: {len(dialled)} leads to dial of "
                                 f"{r.leads}, {len(jobs)} rows of {rows}")  # fmt: skip
            if not mine:
                continue
            left = self.left(r)
            if left:
                states = sorted({x["state"] for x in left})
                self.violate(
                    "lost",
                    f"run#{r.index} (run {mine[0]['id']}): {len(left)} leads "
                    f"left {states} after the final resume, e.g. {left[0]['e164']}",
                )

    def judge_drains(self) -> None:
        """After SIGINT/SIGTERM, at most the create of the claim in progress may still go out:
        counted from the ledger (claimed_at is the pass's start, not the claim's moment), as
        the numbers of the run created at Twilio from DRAIN_SLACK after the signal until the
        process ended, while no other driver of the run was alive."""
        for job in self.jobs:
            if job.drained_at is None or job.run is None or job.killed_by_us:
                continue
            until = job.ended_at or time.time()
            others = [
                j for j in self.jobs
                if j is not job and j.run == job.run and j.kind in ("start", "resume")
                and j.proc.started < until and (j.ended_at or time.time()) > job.drained_at
            ]  # fmt: skip
            if others:
                continue
            since = self.clock.shared(job.drained_at + DRAIN_SLACK) + self.plan.offset
            mine = set(self.plan.runs[job.run].numbers())
            end = self.clock.shared(until) + self.plan.offset
            late = {c.to for c in self.sim.calls() if c.to in mine and since < c.created_at <= end}
            if len(late) > 1:
                self.violate("drain", f"{job.proc.name}: {len(late)} numbers dialled after its "
                             f"drain signal, e.g. {sorted(late)[0]}; at most the claim in progress "
                             "may go out")  # fmt: skip

    def check_processes(self) -> None:
        for job in self.jobs:
            rc = job.proc.poll()
            text = job.proc.err.read_text(errors="replace") if job.proc.err.exists() else ""
            if "Traceback" in text:
                self.violate("exit", f"{job.proc.name} printed a traceback:\n{job.proc.tail(8)}")
            if rc not in DOCUMENTED and not (rc == KILLED and job.killed_by_us) and rc != job.early:
                self.violate("exit", f"{job.proc.name} exited {rc}\n{job.proc.tail(4)}")

    def when(self, sim_t: float) -> str:
        """A Twilio ledger time as scenario seconds (real) since the start."""
        return f"{(sim_t - self.plan.offset - self.plan.base) / SPEED:.2f}s"


def shown(args: tuple[object, ...] | list[object]) -> str:
    """Arguments as a violation names them: files by their name, not this machine's path."""
    return " ".join(a.name if isinstance(a, Path) else str(a) for a in args)


def settled(row: dict[str, Any]) -> bool:
    state = row["state"]
    if state in ("completed", "needs_review"):
        return True
    if state == "failed":
        return bool(row["outcome"])
    if state == "skipped":
        return bool(row["skip_reason"])
    return False


# -- running many ---------------------------------------------------------------------------------


def scenario_seed(seed: int, i: int) -> int:
    """The i-th scenario's own seed, derived from the session's."""
    return random.Random(f"explore:{seed}:{i}").randrange(10**9)


def replay_command(seed: int) -> str:
    return f"python bench/explore.py --replay {seed} --verbose"


def run_one(
    seed: int, work: Path, keep: bool = False, say: Callable[[str], None] = lambda _: None
) -> list[str]:
    """Play and judge the scenario of `seed` in a fresh directory under `work`."""
    plan = draw(seed)
    for line in plan.describe():
        say(line)
    directory = work / f"s{seed}"
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return Scenario(plan, directory, say).play()
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
