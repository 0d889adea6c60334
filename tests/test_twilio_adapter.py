"""The adapter speaks Twilio's contract and sorts its failures by what is safe to do next."""

from __future__ import annotations

import pytest

from dialer_cli.errors import TwilioFailure
from dialer_cli.models import CallParams, RunStatus
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, Faults
from dialer_cli.twilio_adapter import TwilioCalls
from tests.conftest import FROM, make_leads, new_run
from tests.contract import validate_request

TWIML = CallParams(twiml="<Response><Say>Hi</Say></Response>", timeout=30)


def test_every_request_of_a_faulty_campaign_follows_the_spec(store, sim, harness):
    """Creates, polls, lists (reconciliation) and cancels, judged against Twilio's OpenAPI."""
    h = harness(new_run(store, make_leads(12)))
    sim.faults = Faults(p_drop=0.3, p_429=0.1, p_500=0.1, seed=3)
    h.tick()
    h.clock.advance(1)
    h.tick()
    store.request_stop(h.dialer.run_id, cancel=True, driver_alive=True, now=h.clock.now)
    sim.faults = Faults()
    h.run_until_done(step=1.0)
    methods = {(r.method, r.path.rsplit("/", 1)[-1] == "Calls.json") for r in sim.requests()}
    assert ("GET", True) in methods  # reconciliation listed calls
    assert ("POST", True) in methods and ("GET", False) in methods
    for request in sim.requests():
        assert validate_request(request.method, request.path, request.params) == [], request


def test_create_sends_to_from_and_the_call_params(sim, calls):
    info = calls.create("+12125550100", FROM, TWIML)
    assert info.sid.startswith("CA") and info.status == "queued"
    sent = sim.creates()[-1].params
    assert sent["To"] == ["+12125550100"] and sent["From"] == [FROM]
    assert sent["Twiml"] == [TWIML.twiml] and sent["Timeout"] == ["30"]


@pytest.mark.parametrize(
    ("to", "kind", "code"),
    [
        ("+15005550001", "rejected", 21217),
        ("+15005550002", "rejected", 21214),
        ("+15005550003", "rejected", 21215),
        ("not-a-number", "rejected", 21211),
    ],
)
def test_per_lead_rejections(calls, to, kind, code):
    with pytest.raises(TwilioFailure) as info:
        calls.create(to, FROM, TWIML)
    assert (info.value.kind, info.value.code) == (kind, code)


def test_a_refused_from_number_is_an_account_problem(calls):
    with pytest.raises(TwilioFailure) as info:
        calls.create("+12125550100", "+15005550001", TWIML)
    assert info.value.kind == "account" and info.value.code == 21212


def test_wrong_credentials_are_an_account_problem(sim):
    bad = TwilioCalls(DEFAULT_ACCOUNT_SID, "nope", sim.url, 5)
    for call in (
        lambda: bad.create("+12125550100", FROM, TWIML),
        lambda: bad.fetch("CA" + "0" * 32),
    ):
        with pytest.raises(TwilioFailure) as info:
            call()
        assert info.value.kind == "account"
        assert "nope" not in str(info.value)


def test_429_is_retry_and_carries_retry_after(sim, calls):
    sim.faults = Faults(p_429=1.0)
    with pytest.raises(TwilioFailure) as info:
        calls.create("+12125550100", FROM, TWIML)
    assert info.value.kind == "retry" and info.value.retry_after == 1.0
    assert not sim.calls()


@pytest.mark.parametrize("fault", ["p_500_after_create", "p_drop", "p_500"])
def test_an_unanswered_create_is_unknown_never_a_failure(sim, calls, fault):
    sim.faults = Faults(**{fault: 1.0})
    with pytest.raises(TwilioFailure) as info:
        calls.create("+12125550100", FROM, TWIML)
    assert info.value.kind == "unknown"


def test_poll_errors_are_retryable_and_unknown_sids_not_found(sim, calls):
    sid = calls.create("+12125550100", FROM, TWIML).sid
    sim.faults = Faults(p_500=1.0)
    with pytest.raises(TwilioFailure) as info:
        calls.fetch(sid)
    assert info.value.kind == "retry"
    with pytest.raises(TwilioFailure) as info:
        calls.recent("+12125550100", FROM, 0)
    assert info.value.kind == "retry"
    sim.faults = Faults()
    with pytest.raises(TwilioFailure) as info:
        calls.fetch("CA" + "f" * 32)
    assert info.value.kind == "not_found"


def test_recent_lists_newest_first_across_pages(sim, calls, clock):
    sids = []
    for _ in range(120):
        sids.append(calls.create("+12125550100", FROM, TWIML).sid)
        clock.advance(1)
    found = calls.recent("+12125550100", FROM, since=clock.now - 200)
    assert [c.sid for c in found] == sids[::-1]
    recent = calls.recent("+12125550100", FROM, since=clock.now - 10.5)
    assert [c.sid for c in recent] == sids[:-11:-1]


def test_end_cancels_or_hangs_up(sim, calls, clock):
    sid = calls.create("+12125550100", FROM, TWIML).sid
    assert calls.end(sid, answered=False).status == "canceled"
    assert sim.requests()[-1].params["Status"] == ["canceled"]
    assert RunStatus.STOPPED == "stopped"
