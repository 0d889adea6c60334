"""Twilio's clock and ours disagree: the dialer measures the offset from Twilio's Date headers,
so reconciliation still finds a call whose create answer was lost, and `doctor` says so."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dialer_cli import doctor
from dialer_cli.config import load_settings
from dialer_cli.models import CallParams, RunStatus
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Faults, Simulator
from dialer_cli.twilio_adapter import TwilioCalls
from tests.conftest import FROM, FakeClock, fixed_plan, make_leads, new_run, write_config

BEHIND = 90.0  # Twilio's clock runs this far behind ours


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    """The conftest simulator, but its clock (and so Date and date_created) 90 s behind ours."""
    with Simulator(clock=lambda: clock.now - BEHIND, plan=fixed_plan()) as simulator:
        yield simulator


def test_a_lost_create_is_adopted_when_twilios_clock_is_90_s_behind(store, sim, harness):
    h = harness(new_run(store, make_leads(1)))
    sim.faults = Faults(p_drop=1.0)  # the call is placed, its answer never comes back
    h.tick()
    sim.faults = Faults()
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert len(sim.creates()) == 1, "the lead was dialled a second time"
    assert sim.max_live() == 1
    assert [e.kind for e in h.events].count("call-adopted") == 1
    assert store.counts(h.dialer.run_id)["completed"] == 1


@pytest.mark.parametrize("twilio_minus_ours", [-BEHIND, 0.0, 30.0])
def test_the_offset_is_measured_from_the_date_header(clock, twilio_minus_ours):
    with Simulator(clock=lambda: clock.now + twilio_minus_ours) as server:
        calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, server.url, 5, clock=clock)
        assert calls.clock_offset() == 0.0  # nothing measured yet
        for _ in range(3):
            calls.check_account()
            clock.advance(0.3)  # Date has one-second resolution: the estimate stays within it
        assert calls.clock_offset() == pytest.approx(-twilio_minus_ours, abs=1.0)


def doctor_clock(tmp_path: Path, behind: float) -> doctor.Check:
    with Simulator(clock=lambda: time.time() - behind) as server:
        settings = load_settings(write_config(tmp_path / "c.yaml", server), os.environ)
        checks = {c.name: c for c in doctor.check_twilio(settings, simulate=False)}
    assert list(checks) == ["twilio", "clock", "from"]
    return checks["clock"]


def test_doctor_warns_when_the_clocks_differ_by_more_than_5_s(tmp_path):
    check = doctor_clock(tmp_path, behind=BEHIND)
    assert check.ok  # a warning: reconciliation allows for it
    assert check.detail.startswith("warning: this machine's clock is 90 s ahead of Twilio's")


def test_doctor_reports_clocks_that_agree(tmp_path):
    check = doctor_clock(tmp_path, behind=0.0)
    assert check.ok and check.detail.startswith("within 5 s of Twilio's")


def test_recent_never_narrows_the_window_when_twilio_is_ahead(clock):
    """Twilio ahead of us only makes its date_created later: the window stays as asked."""
    with Simulator(clock=lambda: clock.now + 600) as server:
        calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, server.url, 5, clock=clock)
        sid = calls.create("+12125550100", FROM, CallParams(twiml="<Response/>")).sid
        assert [c.sid for c in calls.recent("+12125550100", FROM, since=clock.now - 60)] == [sid]
