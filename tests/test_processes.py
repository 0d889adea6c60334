"""Process-level promises: one decision per source, one driver per run, a stop that is obeyed.

- Two `dialer start` of one source at once (a cron overlap, a second terminal): exactly one
  imports and dials, the other exits 4 naming the run: CSV files, database sources, campaigns.
- `stop` against a stalled driver (SIGSTOP, a heartbeat older than a minute): the driver still
  holds the run's lock, so it is alive; when it wakes it dials nothing and exits 3.
- The run's lock does not depend on how the database path is spelled (symlink, relative,
  `./x/../x.db`), and there is one lock file per database, however many runs.

Every dialer is a real subprocess talking HTTP to the simulator in this process; the verdicts
come from the simulator's ledger, exit codes, and the database.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dialer_cli import lease, runner
from dialer_cli.cli import app
from dialer_cli.errors import BusyError
from dialer_cli.models import RunStatus
from dialer_cli.simulator import CallPlan, Simulator
from dialer_cli.store import Store
from tests.conftest import ROOT, T0, make_leads, new_run, wait_for
from tests.test_campaigns import campaign_config, crm
from tests.test_crash import (
    KILLED,
    Campaign,
    Plan,
    Proc,
    assert_promises_kept,
    make_campaign,
    number,
    simulator,
)

pytestmark = pytest.mark.slow

ROWS = 3000  # enough that two imports really overlap
EXIT_BUSY, EXIT_STOPPED = 4, 3


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture
def rt_sim() -> Iterator[Simulator]:
    with simulator() as sim:
        yield sim


def finished(proc: Proc, timeout: float) -> int:
    """The exit status of `proc`, which must end within `timeout` seconds (else killed, fail)."""
    try:
        return proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(
            f"{proc.name} still running after {timeout} s\n{proc.tail()}"
        ) from None


def dialled_once(sim: Simulator) -> None:
    twice = sorted(to for to, n in Counter(c.to for c in sim.calls()).items() if n > 1)
    assert not twice, f"{len(twice)} numbers dialled more than once, e.g. {twice[:3]}"


def both_at_once(c: Campaign, *args: object) -> tuple[Proc, Proc]:
    """Two identical `dialer ...` processes launched together (a cron overlap)."""
    return c.dialer(*args), c.dialer(*args)


def unfinished_runs(c: Campaign) -> list[int]:
    return [r["id"] for r in c.rows("SELECT id FROM runs WHERE status != 'completed'")]


def one_dials_the_other_is_busy(c: Campaign, procs: tuple[Proc, Proc], runs_before: int) -> Proc:
    """Let the starts race until the calls flow, stop every run they made (`dialer stop`), and
    judge: one exits 4, the other (the only one that imported and dialled) exits 3; nobody was
    dialled twice. Returns the loser."""
    made = lambda: len(c.rows("SELECT id FROM runs")) - runs_before  # noqa: E731
    wait_for(
        lambda: len(c.sim.creates()) >= 6 and (made() > 1 or any(p.poll() for p in procs)),
        timeout=90,
        what="the starts to import and dial",
    )
    for run_id in unfinished_runs(c):
        stop = c.dialer("stop", run_id, "--db", c.db)
        assert finished(stop, 30) == 0, stop.tail()
    codes = sorted(finished(p, 60) for p in procs)
    assert codes == [EXIT_STOPPED, EXIT_BUSY], "\n".join(p.tail() for p in procs)
    assert made() == 1, "one import"
    assert c.db.exists(), "the loser must not remove the database the winner dials from"
    dialled_once(c.sim)
    assert c.sim.max_live() <= c.concurrency
    [loser] = [p for p in procs if p.popen.returncode == EXIT_BUSY]
    return loser


def many_leads(tmp_path: Path, sim: Simulator) -> Campaign:
    return make_campaign(tmp_path, sim, ROWS, imported=False, concurrency=3)


# -- 1. two starts of one source at once ----------------------------------------------------------


@pytest.mark.parametrize("database", ["new", "existing", "existing again"])
def test_two_starts_of_one_csv_at_once_only_one_dials(tmp_path, rt_sim, database):
    c = many_leads(tmp_path, rt_sim)
    if database != "new":  # a database that already holds another source's finished run
        other = make_campaign(tmp_path / "other", rt_sim, 1, start=9000, imported=False)
        assert finished(c.dialer("start", other.csv, "--config", c.cfg, "--db", c.db), 60) == 0
    before = len(c.rows("SELECT id FROM runs"))
    procs = both_at_once(c, "start", c.csv, "--config", c.cfg, "--db", c.db, "--yes")
    loser = one_dials_the_other_is_busy(c, procs, before)
    expected = f"already has an unfinished run {before + 1} "
    assert expected in loser.err.read_text(), loser.tail()


@pytest.mark.parametrize("attempt", [1, 2])
def test_two_starts_of_one_database_source_at_once_only_one_dials(tmp_path, rt_sim, attempt):
    c = many_leads(tmp_path, rt_sim)
    url = f"sqlite:///{crm(tmp_path / 'crm.db', ROWS)}"
    procs = both_at_once(c, "start", url, "--table", "leads", "--config", c.cfg, "--db", c.db)
    loser = one_dials_the_other_is_busy(c, procs, 0)
    assert "already has an unfinished run 1 " in loser.err.read_text(), loser.tail()


def test_two_campaign_starts_at_once_only_one_dials(tmp_path, rt_sim):
    """Campaigns already had their lock; this proves it holds against a real race."""
    c = many_leads(tmp_path, rt_sim)
    cfg = campaign_config(tmp_path, rt_sim, f"sqlite:///{crm(tmp_path / 'crm.db', ROWS)}")
    c.concurrency = 2  # the campaign's own setting
    procs = both_at_once(c, "start", "--campaign", "nightly", "--config", cfg, "--db", c.db)
    loser = one_dials_the_other_is_busy(c, procs, 0)
    text = loser.err.read_text()
    assert "campaign nightly is already being dialled by another process" in text, loser.tail()
    assert "(run" not in text or "(run 1)" in text, loser.tail()


def test_new_still_starts_a_second_run_of_the_same_source(tmp_path, rt_sim):
    c = make_campaign(tmp_path, rt_sim, 2, imported=False)
    assert finished(c.start(), 60) == 0
    again = c.dialer("start", c.csv, "--config", c.cfg, "--db", c.db, "--new")
    assert finished(again, 60) == 0, again.tail()
    assert [r["status"] for r in c.rows("SELECT status FROM runs")] == ["completed"] * 2


# -- 2. stop against a stalled driver -------------------------------------------------------------


def stopped_outside_a_write(c: Campaign, proc: Proc) -> None:
    """SIGSTOP the driver at a moment it holds no write transaction (else `stop` would wait)."""
    for _ in range(100):
        os.kill(proc.pid, signal.SIGSTOP)
        probe = sqlite3.connect(c.db, timeout=0)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.01)
        finally:
            probe.close()
    raise AssertionError("the driver never left its write transaction")


def claims(c: Campaign) -> int:
    return len(c.attempts())


@pytest.mark.parametrize("heartbeat", ["fresh", "older than 60 s"])
def test_stop_while_the_driver_is_stalled_then_it_wakes_and_exits_3(tmp_path, rt_sim, heartbeat):
    c = make_campaign(tmp_path, rt_sim, 40)
    driver = c.resume()
    wait_for(lambda: c.owner_pid() == driver.pid and len(rt_sim.creates()) >= 4, what="dialing")
    stopped_outside_a_write(c, driver)
    try:
        if heartbeat != "fresh":
            with sqlite3.connect(c.db) as conn:
                conn.execute("UPDATE runs SET heartbeat_at = heartbeat_at - 120")
        during = c.status()
        assert during["status"] == "running" and during["driver_pid"] == driver.pid
        claimed = claims(c)
        stop = c.dialer("stop", c.run_id, "--db", c.db)
        assert finished(stop, 30) == 0, stop.tail()
        assert "stopping" in stop.err.read_text(), stop.tail()
    finally:
        os.kill(driver.pid, signal.SIGCONT)
    woke = time.monotonic()
    assert finished(driver, 30) == EXIT_STOPPED, driver.tail()
    assert time.monotonic() - woke < 15, "exit within the calls in flight plus a poll or two"
    assert claims(c) == claimed, "nothing claimed after the stop"
    assert len(rt_sim.creates()) <= claimed
    after = c.status()
    assert after["status"] == "stopped" and after["in_progress"] == 0 and after["queued"] > 0
    again = c.dialer("stop", c.run_id, "--db", c.db)
    assert finished(again, 30) == 2, "a stopped run has nothing to stop"
    c.finish()  # and the lock is free: resume takes over and finishes
    assert_promises_kept(c)


def test_a_driver_that_finds_its_run_stopped_dials_nothing_and_finishes(store, sim, harness):
    """A stop that judged the driver dead wrote `stopped`; the driver then wakes."""
    h = harness(new_run(store, make_leads(5), concurrency=1))
    h.tick()
    assert len(sim.calls()) == 1
    store.request_stop(h.dialer.run_id, cancel=False, driver_alive=False, now=h.clock.now)
    assert h.run_until_done(step=1.0, max_ticks=200) == RunStatus.STOPPED
    assert len(sim.calls()) == 1, "nothing dialled after the stop"
    assert store.counts(h.dialer.run_id)["queued"] == 4


def test_status_and_stop_judge_a_driver_by_its_lock_not_its_heartbeat(store):
    run_id = new_run(store, make_leads(2))
    store.take_over(run_id, "owner", os.getpid(), lease.identity()[1], T0)
    much_later = T0 + 3600  # the heartbeat is an hour old: a stalled driver
    with lease.RunLock(store.path, run_id) as lock:
        lock.acquire_run()
        snap = runner.snapshot(store, run_id, much_later)
        assert snap["status"] == "running" and snap["driver_pid"] == os.getpid()
        assert runner.stop(store, run_id, cancel=False, now=much_later).status == "stopping"
        # looking (an open and close of the lock file in this process) did not drop the lock
        with pytest.raises(BusyError), lease.RunLock(store.path, run_id) as second:
            second.acquire_run()
    # the lock released (the process died): nobody drives it, whatever the heartbeat says
    snap = runner.snapshot(store, run_id, T0)
    assert snap["status"] == "stopped" and snap["driver_pid"] is None


def test_a_driver_on_another_host_is_judged_by_its_heartbeat(store):
    run_id = new_run(store, make_leads(1))
    store.take_over(run_id, "owner", 4242, "another-host.example", T0)
    assert runner.snapshot(store, run_id, T0 + 10)["status"] == "running"
    assert runner.snapshot(store, run_id, T0 + 120)["status"] == "stopped"


# -- 7. one lock, however the path is spelled; one lock file per database --------------------------


def test_the_run_lock_holds_whatever_the_spelling_of_the_database_path(tmp_path):
    long = Plan(frozenset({number(0)}), long_s=60.0)  # the driver is busy while we try
    with Simulator(plan=long) as sim:
        c = make_campaign(tmp_path / "x", sim, 6)
        link = tmp_path / "link.db"
        link.symlink_to(c.db)
        spellings = [link, os.path.relpath(c.db, ROOT), tmp_path / "x" / ".." / "x" / c.db.name]
        driver = c.resume()
        wait_for(lambda: c.owner_pid() == driver.pid, what="the driver to take the run")
        for spelling in spellings:
            second = c.dialer("resume", c.run_id, "--config", c.cfg, "--db", spelling)
            assert finished(second, 60) == EXIT_BUSY, f"{spelling}\n{second.tail()}"
            assert "being driven by another process" in second.err.read_text()
            assert c.owner_pid() == driver.pid
        assert driver.kill() == KILLED
        taker = c.dialer("resume", c.run_id, "--config", c.cfg, "--db", link)
        wait_for(lambda: c.owner_pid() == taker.pid, what="a resume to take over after kill -9")
        assert taker.kill() == KILLED
        dialled_once(sim)
        assert sim.max_live() <= c.concurrency


def test_one_lock_file_per_database_however_many_runs(tmp_path):
    csv = tmp_path / "leads.csv"
    csv.write_text("name,phone\nA,+12125550100\nB,+12125550101\n")
    db = tmp_path / "d.db"
    cli = CliRunner()
    for _ in range(5):
        result = cli.invoke(
            app, ["start", str(csv), "--simulate", "--sim-speed", "500", "--db", str(db)]
        )
        assert result.exit_code == 0, result.output
    assert len(Store.open(db).runs()) == 5
    locks = sorted(p.name for p in tmp_path.iterdir() if "lock" in p.name)
    assert locks == ["d.db.lock"]


# -- 10. a campaign that resumes takes --concurrency ---------------------------------------------


def test_a_campaign_start_that_resumes_uses_the_concurrency_flag(tmp_path):
    plan = lambda to, nth: CallPlan("completed", queue_s=0.05, ring_s=0.1, talk_s=0.5)  # noqa: E731
    cli = CliRunner()
    with Simulator(plan=plan) as sim:
        cfg = campaign_config(tmp_path, sim, f"sqlite:///{crm(tmp_path / 'crm.db', 12)}")
        db = tmp_path / "d.db"
        base = ["start", "--campaign", "nightly", "--config", str(cfg), "--db", str(db)]
        first = cli.invoke(app, [*base, "--max-duration", "1s"])
        assert first.exit_code == 3, first.output
        resumed_at = time.time()
        second = cli.invoke(app, [*base, "--concurrency", "1"])
        assert second.exit_code == 0, second.output
        assert "resuming its unfinished run 1" in second.stderr
        later = [x for x in sim.calls() if x.created_at >= resumed_at]
        assert later, "the resumed run dials the rest"
        assert max(sim.live_at(x.created_at) for x in later) == 1
        assert Store.open(db).get_run(1).concurrency == 1
    assert len(Counter(x.to for x in sim.calls())) == 12
