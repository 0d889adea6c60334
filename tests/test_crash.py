"""Crash safety, judged from the simulator's ledger: kill -9 the dialer anywhere, resume, and

1. never more than N calls are live at Twilio, counting calls a dead process left live;
2. nobody is dialled while a call to them is live, nor after one of their calls was answered;
3. every lead ends answered, failed with a reason, or still queued: none vanishes;
4. `dialer resume RUN` right after the kill takes over at once (the lock dies with the process)
   and finishes the run.

The simulator runs in this process on the real clock; every dialer is a real subprocess (the
CLI, or `tests.crash_entry`: the real engine with a SIGKILL at a named step boundary) pointed at
it through a config file. Verdicts come from the ledger and `dialer status N --json` only; the
database is read (read-only) just to say which mechanism settled a call, and to name a stall.

The helpers are shared with `bench/soak.py`, which runs the random-kill scenario at length.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dialer_cli import intake, runner
from dialer_cli.config import load_settings
from dialer_cli.leads import read_csv
from dialer_cli.models import CallParams, JobState, RunStatus
from dialer_cli.simulator import CallPlan, Faults, RecordedRequest, SimCall, Simulator
from dialer_cli.store import Store
from tests.conftest import FROM, ROOT, make_leads, new_run, wait_for, write_config
from tests.crash_entry import POINTS

pytestmark = pytest.mark.slow  # real processes and SIGKILL; part of the default run

GRACE = 0.2  # dialing.reconcile_grace: two empty lists this far apart prove no call exists
POLL = 0.02  # dialing.poll_interval
STALL = 5.0  # a driver alive this long with nothing live, created or ended at Twilio is stuck
KILLED = -signal.SIGKILL
TERMINAL = ("completed", "busy", "no-answer", "failed", "canceled")


# -- the simulated world --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Real-time calls of a fraction of a second, outcomes mixed and fixed per (number, nth);
    calls to the `long` numbers are answered and talk for `long_s` seconds."""

    long: frozenset[str] = frozenset()
    long_s: float = 4.0

    def __call__(self, to: str, nth: int) -> CallPlan:
        if to in self.long:
            return CallPlan("completed", queue_s=0.05, ring_s=0.1, talk_s=self.long_s)
        rng = random.Random(f"{to}:{nth}")
        x = rng.random()
        outcome = "completed" if x < 0.7 else "busy" if x < 0.85 else "no-answer"
        return CallPlan(
            outcome,
            queue_s=rng.uniform(0.02, 0.1),
            ring_s=rng.uniform(0.05, 0.25),
            talk_s=rng.uniform(0.1, 0.4),
        )


def number(i: int, start: int = 100) -> str:
    """The i-th lead's number (fictional 555 numbers)."""
    return f"+1212555{start + i:04d}"


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "DIALER_"))}


class Stalled(AssertionError):
    """A driver is alive but nothing happens at Twilio: no call live, none created or ended."""


@dataclass
class Proc:
    """A dialer subprocess whose output goes to files (a full pipe would stall it)."""

    popen: subprocess.Popen
    name: str
    out: Path
    err: Path
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> int:
        """SIGKILL (unless it already ended) and reap: returns the exit status."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        return self.popen.wait(30)

    def tail(self, lines: int = 15) -> str:
        text = []
        for path in (self.err, self.out):
            content = path.read_text(errors="replace").splitlines() if path.exists() else []
            text.append(f"--- {path.name}\n" + "\n".join(content[-lines:]))
        return f"{self.name} (rc {self.popen.returncode})\n" + "\n".join(text)


@dataclass
class Campaign:
    """One run on one database, dialled through one simulator by successive processes."""

    directory: Path
    sim: Simulator
    numbers: list[str]
    concurrency: int
    run_id: int = 1
    spawned: int = 0
    kills: list[str] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.directory / "dialer.db"

    @property
    def cfg(self) -> Path:
        return self.directory / "dialer.yaml"

    @property
    def csv(self) -> Path:
        return self.directory / "leads.csv"

    # processes

    def spawn(self, *argv: object, name: str) -> Proc:
        self.spawned += 1
        out = self.directory / f"{self.spawned:03d}-{name}.out"
        err = self.directory / f"{self.spawned:03d}-{name}.err"
        with out.open("w") as o, err.open("w") as e:
            popen = subprocess.Popen(
                [sys.executable, *map(str, argv)],
                stdin=subprocess.DEVNULL, stdout=o, stderr=e, env=child_env(), cwd=ROOT,
            )  # fmt: skip
        return Proc(popen, f"{name} #{self.spawned}", out, err)

    def dialer(self, *args: object) -> Proc:
        return self.spawn("-m", "dialer_cli", *args, name=str(args[0]))

    def start(self) -> Proc:
        return self.dialer("start", self.csv, "--config", self.cfg, "--db", self.db, "--yes")

    def resume(self) -> Proc:
        return self.dialer("resume", self.run_id, "--config", self.cfg, "--db", self.db)

    def crash(self, point: str, nth: int) -> Proc:
        return self.spawn(
            "-m", "tests.crash_entry", "--db", self.db, "--config", self.cfg,
            "--run", self.run_id, "--kill-at", point, "--nth", nth, name=f"crash-{point}-{nth}",
        )  # fmt: skip

    def wait(
        self, proc: Proc, until: Callable[[], bool] | None = None, timeout: float = 90.0
    ) -> int | None:
        """Wait for `proc` to exit (its status) or for `until` (None); a stalled driver is
        killed and raises Stalled at once instead of running into the timeout."""
        deadline = time.monotonic() + timeout
        while (rc := proc.poll()) is None:
            if until is not None and until():
                return None
            if time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"{proc.name} still running after {timeout} s\n{proc.tail()}")
            if self.idle_since(proc.started) > STALL:
                proc.kill()
                raise Stalled(f"{proc.name} stalled: {self.stuck()}\n{proc.tail()}")
            time.sleep(0.02)
        return rc

    def finish(self, timeout: float = 90.0) -> Proc | None:
        """`dialer resume` until the run completes (exit 0); None if it had already completed."""
        if self.run_status() == RunStatus.COMPLETED:
            return None
        proc = self.resume()
        assert self.wait(proc, timeout=timeout) == 0, proc.tail()
        return proc

    def status(self) -> dict[str, Any]:
        proc = self.dialer("status", self.run_id, "--json", "--db", self.db)
        assert proc.popen.wait(30) == 0, proc.tail()
        return json.loads(proc.out.read_text())

    def idle_since(self, since: float) -> float:
        """Seconds since anything happened at Twilio (a call created or ended), 0 while a call
        is live; counted from `since` at the earliest."""
        now, speed = time.time(), self.sim.speed
        calls = self.sim.calls()
        if any(c.created_at <= now < c.ended_at(speed) for c in calls):
            return 0.0
        moments = [since, *(c.created_at for c in calls)]
        moments += [c.ended_at(speed) for c in calls if c.ended_at(speed) <= now]
        return now - max(moments)

    # the database, read-only, for which mechanism settled a call (verdicts use the ledger)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        if not self.db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute(sql, params)]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a starting process has not created it yet
                return []
            raise
        finally:
            conn.close()

    def owner_pid(self) -> int | None:
        rows = self.rows("SELECT owner_pid FROM runs WHERE id=?", (self.run_id,))
        return rows[0]["owner_pid"] if rows else None

    def run_status(self) -> str | None:
        rows = self.rows("SELECT status FROM runs WHERE id=?", (self.run_id,))
        return rows[0]["status"] if rows else None

    def attempts(self) -> list[dict[str, Any]]:
        """Our calls table: one row per create attempt."""
        return self.rows("SELECT * FROM calls WHERE run_id=? ORDER BY id", (self.run_id,))

    def stuck(self) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT j.phone, j.state, c.result, c.call_sid, c.twilio_status FROM jobs j "
            "JOIN calls c ON c.token = j.token WHERE j.run_id=? "
            "AND j.state IN ('dialing','calling','reviewing')",
            (self.run_id,),
        )


def make_campaign(
    directory: Path, sim: Simulator, leads: int, *, concurrency: int = 3, start: int = 100,
    imported: bool = True, **dialing: object,
) -> Campaign:  # fmt: skip
    """Leads CSV and config on disk; with `imported`, the run is created through the import
    path `dialer start` uses (intake.import_run), but nobody drives it yet."""
    directory.mkdir(parents=True, exist_ok=True)
    numbers = [number(i, start) for i in range(leads)]
    c = Campaign(directory, sim, numbers, concurrency)
    rows = [f"Lead {i},{n}" for i, n in enumerate(numbers)]
    c.csv.write_text("name,phone\n" + "\n".join(rows) + "\n", encoding="utf-8")
    write_config(
        c.cfg, sim, concurrency=concurrency, poll_interval=POLL, reconcile_grace=GRACE, **dialing
    )
    if imported:
        settings = load_settings(c.cfg, {})
        store = Store.open(c.db)
        try:
            target = runner.twilio_target(settings)
            c.run_id = intake.import_run(store, read_csv(c.csv), settings, target, time.time())
        finally:
            store.close()
    return c


# -- the referee ----------------------------------------------------------------------------------


@dataclass
class Verdict:
    leads: int
    calls: int
    double_dials: int  # calls beyond the first to one number (max_attempts is 1 here)
    overlapping: int  # calls created while another call to the same number was live
    after_answer: int  # calls created after a call to the same number was answered
    lost: int  # leads neither answered, failed, in review nor queued
    max_live: int
    concurrency: int
    status: dict[str, Any]
    problems: list[str]

    def line(self) -> str:
        return (
            f"{self.leads} leads, {self.calls} calls, {self.double_dials} double dials, "
            f"{self.lost} lost, max live {self.max_live}/{self.concurrency}"
        )


def judge(sim: Simulator, status: dict[str, Any], numbers: list[str], n: int) -> Verdict:
    """The promises, from the ledger and the final `dialer status --json` only."""
    calls = sim.calls()
    by_number: dict[str, list[SimCall]] = defaultdict(list)
    for call in sorted(calls, key=lambda c: (c.created_at, c.seq)):
        by_number[call.to].append(call)
    problems: list[str] = []
    overlapping = after_answer = 0
    for to, mine in by_number.items():
        for i, later in enumerate(mine[1:], start=1):
            earlier = mine[:i]
            if any(later.created_at < e.ended_at(sim.speed) for e in earlier):
                overlapping += 1
                problems.append(f"{to}: call {later.sid} created while another to it was live")
            if any(e.answered(sim.speed) for e in earlier):
                after_answer += 1
                problems.append(f"{to}: call {later.sid} created after one to it was answered")
    double = sum(len(m) - 1 for m in by_number.values())
    if double:
        problems.append(f"double dials: {sorted(t for t, m in by_number.items() if len(m) > 1)}")
    strangers = set(by_number) - set(numbers)
    if strangers:
        problems.append(f"calls to numbers not in the run: {sorted(strangers)}")
    peak = sim.max_live()
    if peak > n:
        problems.append(f"{peak} calls live at once, limit {n}")

    final = status["completed"] + status["failed"] + status["needs_review"]
    lost = len(numbers) - final - status["queued"] - status["in_progress"]
    if lost:
        problems.append(f"{lost} leads vanished")
    if status["total_leads"] != len(numbers):
        problems.append(f"total_leads {status['total_leads']}, expected {len(numbers)}")
    if status["status"] != "completed" or status["queued"] or status["in_progress"]:
        problems.append(
            f"run not finished: {status['status']}, queued {status['queued']}, "
            f"in progress {status['in_progress']}"
        )
    if status["needs_review"]:
        problems.append(f"{status['needs_review']} leads need review (several calls found)")
    never = set(numbers) - set(by_number)
    if never and not problems:
        problems.append(f"{len(never)} leads never dialled, e.g. {sorted(never)[:3]}")
    out = status["outcomes"]
    if out["answered"] != status["completed"]:
        problems.append(f"answered {out['answered']} != completed {status['completed']}")
    if sum(v for k, v in out.items() if k != "answered") != status["failed"]:
        problems.append(f"failed leads without a reason: {out} vs failed {status['failed']}")
    if not double:  # one call per lead: the ledger's outcomes are the leads' outcomes
        played = Counter(
            "answered" if c.answered(sim.speed) else c.plan.outcome.replace("-", "_") for c in calls
        )
        mismatch = {k: (out.get(k, 0), v) for k, v in played.items() if out.get(k, 0) != v}
        if mismatch:
            problems.append(f"outcomes (status, ledger) disagree: {mismatch}")
    return Verdict(
        leads=len(numbers),
        calls=len(calls),
        double_dials=double,
        overlapping=overlapping,
        after_answer=after_answer,
        lost=lost,
        max_live=peak,
        concurrency=n,
        status=status,
        problems=problems,
    )


def assert_promises_kept(c: Campaign) -> Verdict:
    verdict = judge(c.sim, c.status(), c.numbers, c.concurrency)
    assert not verdict.problems, "\n".join([*verdict.problems, f"kills: {c.kills}"])
    return verdict


def lists_for(sim: Simulator, to: str, since: float) -> list[RecordedRequest]:
    return [
        r
        for r in sim.requests()
        if r.method == "GET" and r.path.endswith("/Calls.json") and r.params.get("To") == [to]
        and r.at >= since
    ]  # fmt: skip


def fetched(sim: Simulator, since: float) -> set[str]:
    """SIDs whose status was fetched (GET /Calls/SID.json) since then."""
    return {
        r.path.rsplit("/", 1)[-1].removesuffix(".json")
        for r in sim.requests()
        if r.method == "GET" and "/Calls/" in r.path and r.at >= since
    }


def creates_to(sim: Simulator, to: str) -> list[RecordedRequest]:
    return [r for r in sim.creates() if r.params.get("To") == [to]]


# -- random kills (also bench/soak.py) ------------------------------------------------------------


def kill_when(c: Campaign, proc: Proc, creates: int, delay: float) -> int:
    """SIGKILL `proc` once it has taken the run over and the ledger holds `creates` creates,
    `delay` seconds later; returns its exit status (0 if the run completed first)."""
    # Promise 4: the new driver takes the run over at once (a stale lock would be exit 4).
    c.wait(proc, until=lambda: c.owner_pid() == proc.pid, timeout=30)
    c.wait(proc, until=lambda: len(c.sim.creates()) >= creates, timeout=60)
    if proc.poll() is None:
        time.sleep(delay)  # seeded: where the kill lands, not whether the test passes
    return proc.kill()


def random_kills(
    c: Campaign, rng: random.Random, kills: int, *, max_step: int,
    say: Callable[[str], None] = lambda _: None,
) -> int:  # fmt: skip
    """SIGKILL the run's driver `kills` times at moments drawn from `rng`; returns the kills made
    (fewer if the run completed first). A kill is either external (`dialer resume`, killed once
    it has taken the run over and placed 0..max_step more creates, after a random delay) or at
    a step boundary (`tests.crash_entry` at a random point and pass)."""
    made = 0
    while made < kills:
        before = len(c.sim.creates())
        if rng.random() < 0.3:
            point, nth = rng.choice(POINTS), rng.randint(1, 3)
            proc, how = c.crash(point, nth), f"at {point} #{nth}"
            rc = c.wait(proc)
        else:
            step, delay = rng.randint(0, max_step), rng.uniform(0.0, 0.15)
            proc, how = c.resume(), f"after {step} creates + {delay:.2f} s"
            rc = kill_when(c, proc, before + step, delay)
        if rc == 0:
            return made  # the run completed before the kill came
        assert rc == KILLED, proc.tail()
        made += 1
        c.kills.append(how)
        say(f"kill {made}/{kills} {how}: {len(c.sim.calls())} calls placed so far")
    return made


# -- process tests --------------------------------------------------------------------------------


@contextmanager
def simulator(*long: str) -> Iterator[Simulator]:
    with Simulator(plan=Plan(frozenset(long))) as sim:
        yield sim


@pytest.fixture
def rt_sim() -> Iterator[Simulator]:
    with simulator() as sim:
        yield sim


def pending_rows(c: Campaign) -> list[dict[str, Any]]:
    return [r for r in c.attempts() if r["result"] == "pending"]


def killed(c: Campaign, point: str, nth: int) -> None:
    proc = c.crash(point, nth)
    assert c.wait(proc) == KILLED, proc.tail()


def test_kill_right_after_the_claim_commit_lists_twice_then_dials_once(tmp_path, rt_sim):
    """The claim is durable but the create never left: two empty lists `grace` apart prove it,
    the lead goes back to the queue and is dialled exactly once."""
    c = make_campaign(tmp_path, rt_sim, 8)
    killed(c, "after_claim_commit", 2)
    [orphan] = pending_rows(c)
    assert orphan["call_sid"] is None and creates_to(rt_sim, orphan["to_number"]) == []
    t = time.time()
    c.finish()
    assert_promises_kept(c)
    lists = lists_for(rt_sim, orphan["to_number"], t)
    [create] = creates_to(rt_sim, orphan["to_number"])
    assert len(lists) == 2 and lists[1].at - lists[0].at >= GRACE / 2  # (minus request jitter)
    assert create.at > lists[1].at
    results = [r["result"] for r in c.attempts() if r["to_number"] == orphan["to_number"]]
    assert results == ["none_found", "created"]


def test_kill_after_the_create_was_sent_adopts_the_live_call(tmp_path):
    """Twilio placed the call but its SID was never saved: the resume finds and adopts it."""
    with simulator(number(1)) as sim:  # the second lead's call outlives the crash
        c = make_campaign(tmp_path, sim, 8)
        killed(c, "after_create_sent", 2)
        [orphan] = pending_rows(c)
        [placed] = [x for x in sim.calls() if x.to == orphan["to_number"]]
        assert orphan["to_number"] == number(1) and orphan["call_sid"] is None
        c.finish()
        assert_promises_kept(c)
    [row] = [r for r in c.attempts() if r["to_number"] == orphan["to_number"]]
    assert row["result"] == "adopted" and row["call_sid"] == placed.sid


def test_resume_after_the_orphaned_call_ended_adopts_it_and_finishes(tmp_path, rt_sim):
    """The common case after a crash: by the time anyone resumes, the call whose answer was
    lost has ended. It must be adopted with its outcome, and the run must finish."""
    c = make_campaign(tmp_path, rt_sim, 6)
    killed(c, "after_create_sent", 2)
    [orphan] = pending_rows(c)
    [placed] = [x for x in rt_sim.calls() if x.to == orphan["to_number"]]
    wait_for(lambda: placed.ended_at(rt_sim.speed) < time.time(), what="the orphan to end")
    c.finish()
    assert_promises_kept(c)
    [row] = [r for r in c.attempts() if r["to_number"] == orphan["to_number"]]
    assert row["result"] == "adopted" and row["call_sid"] == placed.sid


def test_kill_after_the_sid_was_saved_polls_the_call_to_its_end(tmp_path, rt_sim):
    c = make_campaign(tmp_path, rt_sim, 8)
    killed(c, "after_sid_saved", 2)
    saved = [r for r in c.attempts() if r["call_sid"]]
    assert len(saved) == 2 and not pending_rows(c)
    t = time.time()
    c.finish()
    assert_promises_kept(c)
    assert {r["call_sid"] for r in saved} <= fetched(rt_sim, t)


def test_kill_while_polling_polls_again_and_dials_nobody_twice(tmp_path, rt_sim):
    c = make_campaign(tmp_path, rt_sim, 8)
    killed(c, "while_polling", 3)
    live = [r["call_sid"] for r in c.rows("SELECT call_sid FROM jobs WHERE state='calling'")]
    assert live, "the kill should leave calls in flight"
    t = time.time()
    c.finish()
    assert_promises_kept(c)
    assert set(live) <= fetched(rt_sim, t)


def test_kill_while_twilio_holds_the_create_response_adopts_not_redials(tmp_path):
    """The boundary seen from Twilio's side: the call exists and its answer is on the way when
    the process dies (`dialer start`, killed from outside)."""
    with simulator(number(0)) as sim:  # the held call outlives the crash
        c = make_campaign(tmp_path, sim, 6, imported=False)
        sim.hold_creates()
        proc = c.start()
        assert sim.wait_held(1, timeout=30), proc.tail()
        assert proc.kill() == KILLED
        [held] = sim.calls()
        assert len(pending_rows(c)) == 1
        sim.release_creates()
        c.finish()
        assert_promises_kept(c)
    [row] = [r for r in c.attempts() if r["to_number"] == held.to]
    assert row["result"] == "adopted" and row["call_sid"] == held.sid


def test_lost_create_responses_are_adopted_never_redialled(tmp_path, rt_sim):
    """The call is created, then the socket closes unanswered or Twilio answers 500."""
    rt_sim.faults = Faults(p_drop=0.2, p_500_after_create=0.2, seed=11)
    c = make_campaign(tmp_path, rt_sim, 20, imported=False)
    proc = c.start()
    assert c.wait(proc) == 0, proc.tail()
    assert_promises_kept(c)
    lost = [r for r in rt_sim.creates() if r.status in (0, 500)]
    assert {r.status for r in lost} == {0, 500}, "the seed should lose both kinds of answer"
    adopted = [r for r in c.attempts() if r["result"] == "adopted"]
    assert len(adopted) == len(lost)


def test_cleanup_stuck_asks_twilio_then_resume_finishes(tmp_path):
    """After a crash, cleanup-stuck settles the calls whose SIDs were saved by fetching them and
    finds the one whose answer was lost by listing; it dials nothing. A resume then finishes."""
    with simulator(number(2)) as sim:  # the orphan is still live when cleanup-stuck looks
        c = make_campaign(tmp_path, sim, 8)
        killed(c, "after_create_sent", 3)
        sids = [r["call_sid"] for r in c.attempts() if r["call_sid"]]
        [orphan] = pending_rows(c)
        assert len(sids) == 2 and orphan["to_number"] == number(2)
        ends = [x.ended_at(sim.speed) for x in sim.calls() if x.sid in sids]
        wait_for(lambda: max(ends) < time.time(), what="the saved calls to end")
        t, creates = time.time(), len(sim.creates())
        cleanup = c.dialer("cleanup-stuck", "--run", c.run_id, "--config", c.cfg, "--db", c.db)
        assert c.wait(cleanup) == 0, cleanup.tail()
        assert len(sim.creates()) == creates, "cleanup-stuck must not dial"
        assert set(sids) <= fetched(sim, t)
        assert lists_for(sim, orphan["to_number"], t)
        after = c.status()
        assert after["status"] == "stopped" and after["completed"] + after["failed"] == 2
        assert [r["result"] for r in pending_rows(c)] == []
        c.finish()
        assert_promises_kept(c)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_kills_then_resume_keep_every_promise(tmp_path, rt_sim, seed):
    rng = random.Random(seed)
    kills = rng.randint(3, 5)
    c = make_campaign(tmp_path, rt_sim, 40)
    assert random_kills(c, rng, kills, max_step=4) == kills, c.kills
    c.finish()
    assert_promises_kept(c)


# -- in-process reproductions of the bugs above (fake clock, deterministic) -----------------------


def test_resume_right_after_a_lost_response_settles_the_adopted_call(store, sim, harness):
    """Adopted while still live, the call is polled to its end."""
    h = harness(new_run(store, make_leads(1)))  # a lost answer pauses creates: one is enough
    sim.faults = Faults(p_drop=1.0)  # the create reaches Twilio, no answer comes back
    h.tick()
    sim.faults = Faults()
    h.clock.advance(1.0)
    h.tick()
    assert [c.result for c in store.live_calls(h.dialer.run_id)] == ["adopted"]
    assert h.run_until_done(step=1.0, max_ticks=100) == RunStatus.COMPLETED
    assert len(sim.calls()) == 1


def test_a_call_adopted_after_it_ended_is_settled_and_the_run_finishes(store, sim, harness):
    h = harness(new_run(store, make_leads(1)))  # a lost answer pauses creates: one is enough
    sim.faults = Faults(p_drop=1.0)
    h.tick()
    sim.faults = Faults()
    h.clock.advance(60.0)  # the call (12.5 s) ended before anyone reconciled
    h.tick()
    assert [c.result for c in store.live_calls(h.dialer.run_id)] == ["adopted"]
    assert h.run_until_done(step=1.0, max_ticks=100) == RunStatus.COMPLETED
    counts = store.counts(h.dialer.run_id)
    assert counts["completed"] == 1 and counts["in_progress"] == 0
    assert len(sim.calls()) == 1


def test_ambiguous_candidates_that_all_ended_go_to_review_and_free_the_slot(
    store, sim, harness, calls
):
    lead = make_leads(1)[0]
    params = CallParams(twiml="<Response/>")
    for _ in range(2):  # someone else dialled this lead from our number a moment ago
        calls.create(lead.e164, FROM, params)
    h = harness(new_run(store, [lead]))
    sim.faults = Faults(p_drop=1.0)
    h.tick()
    sim.faults = Faults()
    h.clock.advance(60.0)  # every candidate has ended when the reconciliation lists them
    h.tick()
    assert h.run_until_done(step=1.0, max_ticks=100) == RunStatus.COMPLETED
    counts = store.counts(h.dialer.run_id)
    assert counts["needs_review"] == 1 and counts["in_progress"] == 0
    assert store.read("SELECT state FROM jobs")[0][0] == JobState.NEEDS_REVIEW
    assert len(sim.calls()) == 3
