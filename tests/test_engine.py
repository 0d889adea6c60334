"""The scheduling loop, stepped on a fake clock, judged from the simulator's ledger."""

from __future__ import annotations

from collections import Counter

import pytest

from dialer_cli.errors import AccountError
from dialer_cli.models import JobState, RunStatus
from dialer_cli.simulator import CallPlan, Faults
from dialer_cli.twilio_adapter import TwilioCalls
from tests.conftest import FROM, make_leads, new_run


def created_per_number(sim) -> Counter:
    return Counter(c.to for c in sim.calls())


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_small_group_starts_at_once(store, sim, harness, n):
    h = harness(new_run(store, make_leads(n)))
    h.tick()
    assert len(sim.calls()) == n
    assert {c.created_at for c in sim.calls()} == {h.clock.now}


def test_hundred_leads_never_more_than_three_live_and_each_dialled_once(store, sim, harness):
    h = harness(new_run(store, make_leads(100), concurrency=3))
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert sim.max_live() == 3
    per_number = created_per_number(sim)
    assert len(per_number) == 100 and set(per_number.values()) == {1}
    assert store.counts(h.dialer.run_id)["completed"] == 100


def test_a_free_slot_is_refilled_within_one_poll_interval(store, sim, harness):
    poll = 1.0
    h = harness(new_run(store, make_leads(12)), poll_interval=poll)
    h.run_until_done(step=poll)
    calls = sorted(sim.calls(), key=lambda c: c.created_at)
    ends = sorted(c.ended_at(sim.speed) for c in calls)
    later_creates = [c.created_at for c in calls[3:]]
    # the k-th call placed after the first three follows the k-th call ending
    for end, created in zip(ends, later_creates, strict=False):
        assert end <= created <= end + poll


def test_dialing_counts_as_in_flight(store, sim, harness):
    """The seed's critical bug: a call still being set up must hold its slot."""
    h = harness(new_run(store, make_leads(5), concurrency=1))
    sim.faults = Faults(p_drop=1.0)  # the create reaches Twilio, the answer never comes back
    h.tick()
    assert store.counts(h.dialer.run_id)["dialing"] == 1
    sim.faults = Faults()
    for _ in range(3):  # the dialing job's slot is held: nothing else may be created
        h.clock.advance(0.1)
        h.tick()
    assert sim.max_live() == 1 and len(sim.calls()) == 1
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert set(created_per_number(sim).values()) == {1}


def test_claim_counts_dialing_jobs_of_every_run_on_the_account(store):
    run_a = new_run(store, make_leads(3), concurrency=2)
    run_b = new_run(store, make_leads(3, start=150), concurrency=2)
    for run_id, owner in ((run_a, "a"), (run_b, "b")):
        store.take_over(run_id, owner, 1, "h", 0)
    assert store.claim(run_a, "a", 1, lambda to: FROM) is not None
    assert store.claim(run_b, "b", 1, lambda to: FROM) is not None
    # two claims are `dialing` (no SID yet): the account's N=2 is used up for both runs
    assert store.claim(run_a, "a", 1, lambda to: FROM) is None
    assert store.claim(run_b, "b", 1, lambda to: FROM) is None


def test_claim_is_fenced_by_owner_and_run_status(store):
    run_id = new_run(store, make_leads(3))
    store.take_over(run_id, "me", 1, "h", 0)
    assert store.claim(run_id, "zombie", 1, lambda to: FROM) is None
    store.request_stop(run_id, cancel=False, driver_alive=True, now=1)
    assert store.claim(run_id, "me", 1, lambda to: FROM) is None


def test_two_runs_on_one_account_share_the_cap(store, sim, harness):
    a = harness(new_run(store, make_leads(10), concurrency=3), owner="a")
    b = harness(new_run(store, make_leads(10, start=150), concurrency=3), owner="b")
    running = [a, b]
    for _ in range(200):
        running = [h for h in running if not h.tick().done]
        if not running:
            break
        a.clock.advance(1.0)
    assert sim.max_live() == 3
    assert len(sim.calls()) == 20


def test_a_rejected_lead_fails_and_the_run_goes_on(store, sim, harness):
    leads = make_leads(3)
    bad = leads[1].__class__(line=9, phone="+15005550001", e164="+15005550001", fields={})
    h = harness(new_run(store, [*leads, bad]))
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    counts = store.counts(h.dialer.run_id)
    assert counts["completed"] == 3 and counts["outcomes"]["rejected"] == 1
    rejected = [e for e in h.events if e.kind == "call-rejected"]
    assert rejected and rejected[0].data["code"] == 21217


def test_wrong_credentials_fail_the_run_resumably(store, sim, harness, clock):
    h = harness(new_run(store, make_leads(3)))
    h.dialer.calls = TwilioCalls(h.dialer.calls.account_sid, "wrong-token", sim.url, 5)
    with pytest.raises(AccountError, match="credentials"):
        h.tick()
    run = store.get_run(h.dialer.run_id)
    assert run.status == RunStatus.FAILED and "credentials" in (run.error or "")
    assert store.counts(run.id)["queued"] == 3  # nothing lost, nothing counted as dialled


def test_429_on_create_backs_off_and_dials_once(store, sim, harness):
    h = harness(new_run(store, make_leads(3)))
    sim.faults = Faults(p_429=1.0)
    h.tick()
    assert not sim.calls() and store.counts(h.dialer.run_id)["queued"] == 3
    assert any(e.kind == "create-retry" for e in h.events)
    sim.faults = Faults()
    assert h.run_until_done(step=0.5) == RunStatus.COMPLETED
    assert set(created_per_number(sim).values()) == {1}


def test_a_lost_create_response_is_adopted_not_redialled(store, sim, harness):
    h = harness(new_run(store, make_leads(2)))
    sim.faults = Faults(p_drop=1.0)
    while len(sim.calls()) < 2:  # a lost answer pauses creates for a poll interval
        h.tick()
        h.clock.advance(1.0)
    sim.faults = Faults()
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert set(created_per_number(sim).values()) == {1}
    assert sum(e.kind == "call-adopted" for e in h.events) == 2
    assert store.counts(h.dialer.run_id)["completed"] == 2


def test_a_create_that_made_no_call_is_redialled_after_two_checks(store, sim, harness):
    h = harness(new_run(store, make_leads(1)), reconcile_grace=5.0)
    sim.faults = Faults(p_500=1.0)  # a 500 that processed nothing: the outcome is unknown to us
    h.tick()
    sim.faults = Faults()
    h.tick()  # first check: nothing found
    assert not sim.calls() and store.counts(h.dialer.run_id)["dialing"] == 1
    h.clock.advance(4.0)
    h.tick()  # before the grace period: still held, still not redialled
    assert not sim.calls()
    h.clock.advance(1.0)
    h.tick()  # second check, a grace period later: no call exists, so it may be dialled
    assert any(e.kind == "call-not-placed" for e in h.events)
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert len(sim.calls()) == 1


def test_several_candidate_calls_need_review_and_hold_the_slot(store, sim, harness, calls):
    h = harness(new_run(store, make_leads(2), concurrency=1))
    sim.faults = Faults(p_drop=1.0)
    h.tick()
    sim.faults = Faults()
    first_to = sim.calls()[0].to
    calls.create(first_to, FROM, h.dialer.rules.params_for(None))  # a second call to that number
    h.tick()
    assert store.counts(h.dialer.run_id)["needs_review"] == 1
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert created_per_number(sim)[first_to] == 2  # never dialled again by us
    assert sim.max_live() == 2  # the two candidates; the next lead waited for both to end
    second = [c for c in sim.calls() if c.to != first_to][0]
    assert second.created_at >= max(c.ended_at(1) for c in sim.calls() if c.to == first_to)


def test_stop_dials_nothing_new_and_lets_calls_finish(store, sim, harness):
    h = harness(new_run(store, make_leads(10)))
    h.tick()
    store.request_stop(h.dialer.run_id, cancel=False, driver_alive=True, now=h.clock.now)
    assert h.run_until_done(step=1.0) == RunStatus.STOPPED
    assert len(sim.calls()) == 3
    counts = store.counts(h.dialer.run_id)
    assert counts["completed"] == 3 and counts["queued"] == 7 and counts["in_progress"] == 0


def test_stop_cancel_active_ends_live_calls(store, sim, harness):
    h = harness(new_run(store, make_leads(5)))
    h.tick()
    store.request_stop(h.dialer.run_id, cancel=True, driver_alive=True, now=h.clock.now)
    assert h.run_until_done(step=0.1) == RunStatus.STOPPED
    updates = [r for r in sim.requests() if r.method == "POST" and "/Calls/" in r.path]
    assert len(updates) == 3 and {u.params["Status"][0] for u in updates} == {"canceled"}
    assert store.counts(h.dialer.run_id)["outcomes"]["canceled"] == 3


def test_resume_dials_only_what_is_left(store, sim, harness):
    run_id = new_run(store, make_leads(8))
    h = harness(run_id)
    h.tick()
    store.request_stop(run_id, cancel=False, driver_alive=True, now=h.clock.now)
    h.run_until_done(step=1.0)
    h2 = harness(run_id, owner="second")
    assert h2.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert len(sim.calls()) == 8 and set(created_per_number(sim).values()) == {1}


def test_busy_is_retried_after_the_delay_at_most_max_attempts(store, sim, harness):
    sim._plan = lambda to, nth: CallPlan("busy", queue_s=0.5, ring_s=2.0)
    h = harness(new_run(store, make_leads(1)), max_attempts=3, retry_delay=60.0)
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    created = sorted(c.created_at for c in sim.calls())
    assert len(created) == 3
    assert all(b - a >= 60.0 for a, b in zip(created, created[1:], strict=False))
    assert store.counts(h.dialer.run_id)["outcomes"]["busy"] == 1


def test_polling_errors_keep_the_slot_and_back_off(store, sim, harness):
    h = harness(new_run(store, make_leads(4), concurrency=2))
    h.tick()
    sim.faults = Faults(p_500=1.0)
    h.clock.advance(20)
    h.tick()  # every poll fails: the calls have ended at Twilio but we cannot know
    assert any(e.kind == "poll-retry" for e in h.events)
    assert store.counts(h.dialer.run_id)["in_progress"] == 2
    assert len(sim.calls()) == 2
    sim.faults = Faults()
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert sim.max_live() <= 2


def test_events_carry_names_and_outcomes(store, sim, harness):
    h = harness(new_run(store, make_leads(1)))
    h.run_until_done(step=1.0)
    kinds = [e.kind for e in h.events]
    assert kinds[0] == "call-placed" and "call-ended" in kinds and kinds[-1] == "run-finished"
    ended = next(e for e in h.events if e.kind == "call-ended")
    assert ended.data["name"] == "Lead 0" and ended.data["outcome"] == "answered"
    assert store.get_run(h.dialer.run_id).status == RunStatus.COMPLETED
    assert JobState.COMPLETED == "completed"


def test_cancel_active_hangs_up_a_call_answered_since_it_was_last_polled(store, sim, harness):
    h = harness(new_run(store, make_leads(3)), poll_interval=30.0)
    h.tick()  # created; the store still says "queued" when Twilio has them in progress
    h.clock.advance(5.0)
    store.request_stop(h.dialer.run_id, cancel=True, driver_alive=True, now=h.clock.now)
    t = h.tick()
    assert t.done and t.status == RunStatus.STOPPED
    updates = [
        r.params["Status"][0] for r in sim.requests() if "/Calls/" in r.path and r.method == "POST"
    ]
    assert updates == ["completed"] * 3
    assert all(c.ended_at(sim.speed) == h.clock.now for c in sim.calls())


def test_at_larger_n_polling_costs_a_few_list_requests_not_one_fetch_per_call(store, sim, harness):
    h = harness(new_run(store, make_leads(40), concurrency=20))
    h.tick()
    assert len(sim.calls()) == 20
    for _ in range(3):  # the calls are queued, ringing, in progress: none has ended
        seen = len(sim.requests())
        h.clock.advance(1.0)
        h.tick()
        polls = sim.requests()[seen:]
        assert [r.params.get("Status") for r in polls] == [["queued"], ["ringing"], ["in-progress"]]
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    fetches = [r for r in sim.requests() if r.method == "GET" and "/Calls/" in r.path]
    assert len(fetches) <= 40 + 3 * 20  # about one fetch per ended call, not one per call a poll
    assert sim.max_live() == 20 and len(sim.calls()) == 40
