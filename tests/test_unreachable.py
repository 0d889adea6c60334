"""A Twilio that does not answer at all: said at once, shown while it lasts, given up on after
`twilio.give_up_after`, and never a reason to hang, to dial blind or to report what was not
learnt. Engine tests step the fake clock; the promises about processes use real ones."""

from __future__ import annotations

import io
import signal
import socket
import time
from collections import Counter

import pytest
from rich.console import Console

from dialer_cli import render, report
from dialer_cli.engine import run
from dialer_cli.errors import AccountError
from dialer_cli.models import Event, RunStatus
from dialer_cli.simulator import Simulator
from tests.conftest import make_leads, new_run, wait_for
from tests.test_crash import (
    Campaign,
    Plan,
    Proc,
    assert_promises_kept,
    killed,
    make_campaign,
    number,
)

HTTP_TIMEOUT = 5.0  # write_config's twilio.http_timeout
LEAVE_BOUND = HTTP_TIMEOUT + 5.0  # http_timeout + a poll interval, plus a loaded machine's slack


def kinds(events) -> Counter:
    return Counter(e.kind for e in events)


# -- the engine, on the fake clock ----------------------------------------------------------------


def test_unreachable_twilio_is_reported_while_it_lasts_and_dials_nothing(store, sim, harness):
    h = harness(new_run(store, make_leads(5), concurrency=3))
    sim.go_down()
    for _ in range(70):  # 70 s
        h.tick()
        h.clock.advance(1.0)
    down = [e for e in h.events if e.kind == "twilio-unreachable"]
    assert [round(e.data["for_s"]) for e in down] == [0, 30, 60]  # at once, then every 30 s
    assert all(e.data["since"] == down[0].at for e in down)
    # The first create went unanswered (it may have been placed: it stays unknown); no lead
    # after it was claimed into a create that could not be sent.
    counts = store.counts(h.dialer.run_id)
    assert counts["dialing"] == 1 and counts["queued"] == 4
    sim.come_up()
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert kinds(h.events)["twilio-reachable"] == 1
    assert len(sim.creates()) == 5 and sim.max_live() <= 3  # the first never reached Twilio


def test_a_pass_against_a_dead_twilio_sends_one_request_not_one_per_call(store, sim, harness):
    h = harness(new_run(store, make_leads(3), concurrency=3))
    h.tick()
    sim.go_down()
    h.clock.advance(5.0)  # every call is due for a poll
    started = time.monotonic()
    h.tick()
    assert kinds(h.events)["twilio-unreachable"] == 1
    assert kinds(h.events)["poll-retry"] == 0  # one event for the outage, not one per call
    assert time.monotonic() - started < HTTP_TIMEOUT


def test_no_answer_for_give_up_after_fails_the_run_resumably(store, sim, harness):
    run_id = new_run(store, make_leads(4), concurrency=2)
    h = harness(run_id, give_up_after=300.0)
    h.tick()  # two calls placed
    sim.go_down()
    went_down = h.clock.now
    with pytest.raises(AccountError, match=r"no answer from Twilio for 3\d\d s"):
        for _ in range(400):
            h.tick()
            h.clock.advance(10.0)
    assert 300 <= h.clock.now - went_down <= 320
    failed = store.get_run(run_id)
    assert failed.status == RunStatus.FAILED and "no answer from Twilio" in (failed.error or "")
    counts = store.counts(run_id)
    assert counts["in_progress"] == 2 and counts["queued"] == 2  # nothing lost, nothing settled
    sim.come_up()
    again = harness(run_id, owner="resumed")
    assert again.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert len(sim.creates()) == 4 and len({c.to for c in sim.calls()}) == 4


def test_a_drain_while_twilio_is_down_leaves_at_once(store, sim, harness):
    h = harness(new_run(store, make_leads(6), concurrency=3))
    h.tick()
    sim.go_down()
    slept: list[float] = []
    events: list[Event] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        assert len(slept) < 50, "still waiting for calls Twilio cannot tell us about"
        h.clock.advance(max(seconds, 0.1))

    status = run(h.dialer, sleep=sleep, on_event=events.append, should_drain=lambda: True)
    assert status == RunStatus.STOPPED
    assert sum(slept) <= h.dialer.options.poll_interval  # no sleeping once it knows
    assert kinds(events)["left-unsettled"] == 1
    counts = store.counts(h.dialer.run_id)
    assert counts["in_progress"] == 3 and counts["queued"] == 3  # left as they were
    assert store.get_run(h.dialer.run_id).status == RunStatus.STOPPED


# -- what a person sees ---------------------------------------------------------------------------


def test_log_lines_and_the_live_panel_say_twilio_is_unreachable(store, sim, harness):
    h = harness(new_run(store, make_leads(3)))
    h.tick()
    sim.go_down()
    h.clock.advance(5.0)
    h.tick()
    h.clock.advance(40.0)
    h.tick()
    down = [e for e in h.events if e.kind == "twilio-unreachable"][-1]
    line = io.StringIO()
    render.LineView(line).on_event(down)
    assert "Twilio unreachable for 40 s (" in line.getvalue()
    assert line.getvalue().rstrip().endswith("); retrying")
    view = report.live_data(store, h.dialer.run_id, h.clock.now)
    view["unreachable"] = {"for_s": 40.0, "error": "connection refused"}
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(render.run_panel(view))
    header = console.file.getvalue().splitlines()[1]
    assert "Twilio unreachable for 40s (connection refused); retrying" in header


def test_the_live_view_shows_the_outage_until_twilio_answers():
    console = Console(file=io.StringIO(), width=100, color_system=None, force_terminal=True)
    snap = {
        "run_id": 1, "status": "running", "source": "x.csv", "campaign": None,
        "concurrency": 3, "total_leads": 1, "queued": 1, "in_progress": 0, "completed": 0,
        "failed": 0, "needs_review": 0, "skipped": 0, "outcomes": {},
    }  # fmt: skip
    view = render.LiveView(console, lambda: {"status": snap, "elapsed_s": 1.0})
    since = time.time() - 40
    down = {"since": since, "for_s": 40, "error": "connection refused"}
    view.on_event(Event("twilio-unreachable", since + 40, 1, down))
    assert "Twilio unreachable for 40s (connection refused)" in console.file.getvalue()
    view.on_event(Event("twilio-reachable", since + 41, 1, {"since": since, "down_for": 41}))
    view.close()
    last_frame = console.file.getvalue().rsplit("run 1 ·", 1)[-1]
    assert "unreachable" not in last_frame


# -- real processes -------------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ended_within(proc: Proc, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{proc.name} still running after {seconds} s\n{proc.tail()}")
        time.sleep(0.02)
    return proc.popen.returncode


def stderr_of(proc: Proc) -> str:
    return proc.err.read_text()


@pytest.fixture
def long_calls():
    """Every call talks for 4 s: calls are still in flight when Twilio goes away."""
    with Simulator(plan=Plan(frozenset(number(i) for i in range(6)), long_s=4.0)) as sim:
        yield sim


def dialling_then_down(
    tmp_path, sim: Simulator, *extra: object, give_up_after: float = 300.0
) -> tuple[Campaign, Proc]:
    """A `start` with three calls in flight, then Twilio unreachable and the driver aware of it."""
    c = make_campaign(tmp_path, sim, 6, imported=False)
    setting = f"twilio:\n  give_up_after: {give_up_after:g}\n"
    c.cfg.write_text(c.cfg.read_text().replace("twilio:\n", setting))
    proc = c.dialer("start", c.csv, "--config", c.cfg, "--db", c.db, "--yes", *extra)
    wait_for(lambda: len(sim.calls()) == 3 or proc.poll() is not None, 60, "three calls")
    sim.go_down()
    wait_for(lambda: "Twilio unreachable" in stderr_of(proc), 30, "the unreachable line")
    return c, proc


def after_coming_back(c: Campaign, sim: Simulator) -> None:
    """Twilio answers again: a resume settles what was left and finishes, every promise kept."""
    sim.come_up()
    c.finish()
    assert_promises_kept(c)


def test_sigterm_ends_a_start_whose_twilio_went_down(tmp_path, long_calls):
    c, proc = dialling_then_down(tmp_path, long_calls)
    proc.popen.send_signal(signal.SIGTERM)
    assert ended_within(proc, LEAVE_BOUND) == 3, proc.tail()
    assert "left for `dialer resume 1` to settle" in stderr_of(proc)
    assert c.status()["in_progress"] == 3  # left as they were, for resume to reconcile
    after_coming_back(c, long_calls)


def test_dialer_stop_ends_a_start_whose_twilio_went_down(tmp_path, long_calls):
    c, proc = dialling_then_down(tmp_path, long_calls)
    stop = c.dialer("stop", c.run_id, "--db", c.db)
    assert ended_within(stop, 30) == 0, stop.tail()
    assert ended_within(proc, LEAVE_BOUND) == 3, proc.tail()
    after_coming_back(c, long_calls)


def test_max_duration_ends_a_start_whose_twilio_went_down(tmp_path, long_calls):
    c, proc = dialling_then_down(tmp_path, long_calls, "--max-duration", "2s")
    assert ended_within(proc, 2.0 + LEAVE_BOUND) == 3, proc.tail()
    after_coming_back(c, long_calls)


def test_a_start_that_hears_nothing_for_give_up_after_fails_resumably(tmp_path, long_calls):
    c, proc = dialling_then_down(tmp_path, long_calls, give_up_after=2.0)
    assert ended_within(proc, 2.0 + LEAVE_BOUND) == 1, proc.tail()
    assert "no answer from Twilio for 2 s" in stderr_of(proc).splitlines()[-1]
    status = c.status()
    assert status["status"] == "failed" and "no answer from Twilio" in status["error"]
    after_coming_back(c, long_calls)


def test_start_against_a_closed_port_says_so_and_writes_nothing(tmp_path):
    with Simulator() as sim:
        c = make_campaign(tmp_path, sim, 3, imported=False)
    url = f"http://127.0.0.1:{closed_port()}"
    c.cfg.write_text(c.cfg.read_text().replace(sim.url, url))
    proc = c.start()
    assert ended_within(proc, 30) == 1, proc.tail()
    assert stderr_of(proc) == (
        f"error: cannot reach Twilio at {url} (connection refused); nothing was written\n"
    )
    assert proc.out.read_text() == "" and not c.db.exists()


def test_resume_with_twilio_down_says_so_and_leaves_the_run_as_it_was(tmp_path, long_calls):
    c = make_campaign(tmp_path, long_calls, 3)
    before = c.rows("SELECT * FROM runs")
    long_calls.go_down()
    proc = c.resume()
    assert ended_within(proc, 30) == 1, proc.tail()
    assert stderr_of(proc) == (
        f"error: cannot reach Twilio at {long_calls.url} (connection refused); "
        "run 1 was left as it was\n"
    )
    assert c.rows("SELECT * FROM runs") == before
    after_coming_back(c, long_calls)


def test_cleanup_stuck_that_cannot_reach_twilio_says_so_and_exits_1(tmp_path, long_calls):
    c = make_campaign(tmp_path, long_calls, 6)
    killed(c, "after_sid_saved", 3)
    before = c.attempts()
    long_calls.go_down()
    proc = c.dialer("cleanup-stuck", "--config", c.cfg, "--db", c.db)
    assert ended_within(proc, 30) == 1, proc.tail()
    assert stderr_of(proc) == (
        f"error: cannot reach Twilio at {long_calls.url} (connection refused); "
        "run 1's 3 calls in flight were left as they were\n"
    )
    assert c.attempts() == before
    after_coming_back(c, long_calls)


def test_stop_cancel_active_that_cannot_reach_twilio_says_so_and_exits_1(tmp_path, long_calls):
    c = make_campaign(tmp_path, long_calls, 6)
    killed(c, "after_sid_saved", 3)
    long_calls.go_down()
    proc = c.dialer("stop", c.run_id, "--cancel-active", "--config", c.cfg, "--db", c.db)
    assert ended_within(proc, 30) == 1, proc.tail()
    assert stderr_of(proc).splitlines()[-1] == (
        f"error: cannot reach Twilio at {long_calls.url} (connection refused); "
        "run 1's calls in flight were left as they were"
    )
    assert c.status()["in_progress"] == 3
    after_coming_back(c, long_calls)


# -- cleanup-stuck says what it did (issue 11, item 11) -------------------------------------------


def test_cleanup_stuck_with_nothing_stuck_says_so(tmp_path, long_calls):
    c = make_campaign(tmp_path, long_calls, 2)
    proc = c.dialer("cleanup-stuck", "--config", c.cfg, "--db", c.db)
    assert ended_within(proc, 30) == 0, proc.tail()
    assert stderr_of(proc) == "nothing stuck: no run has calls in flight\n"


def test_cleanup_stuck_says_what_it_settled_run_by_run(tmp_path, long_calls):
    c = make_campaign(tmp_path, long_calls, 6)
    killed(c, "after_sid_saved", 3)
    ends = [x.ended_at(long_calls.speed) for x in long_calls.calls()]
    wait_for(lambda: max(ends) < time.time(), 30, "the calls to end at Twilio")
    proc = c.dialer("cleanup-stuck", "--config", c.cfg, "--db", c.db)
    assert ended_within(proc, 30) == 0, proc.tail()
    assert stderr_of(proc) == "run 1: settled 3 of 3 calls in flight (3 answered)\n"
