"""Voicemail drop without webhooks (issue 12, part 4), judged from the simulator's ledger.

The simulator answers some numbers with a machine and fills `answered_by` as Twilio does for
each MachineDetection mode; it records the TwiML of every update. The engine, polling through
the real twilio client, must send the machine message to exactly the machine-answered calls,
once each, soon after the verdict, and never to a person, even across a kill -9.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dialer_cli import intake, render, report, runner
from dialer_cli.config import load_settings
from dialer_cli.engine import Dialer
from dialer_cli.errors import ConfigError, TwilioFailure
from dialer_cli.leads import read_csv
from dialer_cli.models import CallParams, Lead, RunStatus
from dialer_cli.simulator import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    CallPlan,
    Faults,
    SimCall,
    Simulator,
    default_plan,
)
from dialer_cli.store import SCHEMA_VERSION, Store
from dialer_cli.twilio_adapter import TwilioCalls
from tests.conftest import FROM, ROOT, FakeClock, Harness, write_config
from tests.contract import validate_request
from tests.test_crash import Campaign, make_campaign

HUMAN = "<Response><Say>Hello {name}, this is your reminder.</Say></Response>"
MACHINE = "<Response><Say>Sorry we missed you, {name}. Please call us back.</Say></Response>"
ODD_NAME = "Ann & <Co>"  # escaped as text inside the TwiML, never markup


def machine(greeting: float = 6.0, end: str = "beep", talk: float = 30.0) -> CallPlan:
    return CallPlan("completed", 0.5, 2.0, talk, party="machine", greeting_s=greeting,
                    greeting_end=end, detect_s=2.0)  # fmt: skip


def person(party: str = "human", detect: float = 2.0, talk: float = 30.0) -> CallPlan:
    return CallPlan("completed", 0.5, 2.0, talk, party=party, detect_s=detect)


# Who answers each number: three machines (each way a greeting ends), a person, a fax, a line
# that stays silent (AMD times out: unknown) and a busy line.
PLANS = {
    "+12125550100": machine(6.0, "beep"),
    "+12125550101": person(),
    "+12125550102": machine(9.0, "silence"),
    "+12125550103": person("fax"),
    "+12125550104": person("silence", talk=40.0),
    "+12125550105": CallPlan("busy", 0.5, 3.0),
    "+12125550106": machine(4.0, "other"),
}
MACHINES = {"+12125550100", "+12125550102", "+12125550106"}


def leads_for(numbers: list[str]) -> list[Lead]:
    return [
        Lead(line=i + 2, phone=n, e164=n, fields={"name": f"{ODD_NAME} {i}", "phone": n})
        for i, n in enumerate(numbers)
    ]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(clock=clock, plan=lambda to, nth: PLANS[to]) as simulator:
        yield simulator


def contract_violations(sim: Simulator) -> list[str]:
    """Every request the dialer sent, checked against Twilio's own spec."""
    return [
        f"{r.method} {r.path}: {v}"
        for r in sim.requests()
        for v in validate_request(r.method, r.path, r.params)
    ]


def drive(
    store: Store,
    sim: Simulator,
    clock: FakeClock,
    numbers: list[str],
    call: dict[str, object],
    dialing: dict[str, object] | None = None,
) -> Harness:
    """A run configured as a user would (call/dialing settings), wired by runner exactly as
    `dialer start` wires it, stepped on the fake clock through the real adapter."""
    run_id = store.create_run(
        source="vm.csv",
        source_key=f"vm:{len(store.runs())}",
        leads=leads_for(numbers),
        target=DEFAULT_ACCOUNT_SID,
        base_url=None,
        from_number=FROM,
        concurrency=3,
        settings={"call": call, "dialing": dialing or {}},
        now=clock(),
    )
    store.take_over(run_id, "owner", os.getpid(), "host", clock())
    run_ = store.get_run(run_id)
    target = runner.Target(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, 5, FROM)
    calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, 5, clock=clock)
    options, rules = runner.options_for(run_, target), runner.engine_rules(run_, target)
    dialer = Dialer(store, calls, run_id, "owner", options=options, rules=rules, clock=clock)
    return Harness(store, dialer, clock)


def detected_at(c: SimCall) -> float:
    """When the simulator's AMD reached its verdict on a machine (DetectMessageEnd)."""
    answer = c.answer_at(1.0)
    assert answer is not None
    return answer + c.plan.greeting_s


AMD_CALL = {"twiml": HUMAN, "machine_detection": "DetectMessageEnd", "machine_twiml": MACHINE}


# -- the simulator as Twilio -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "plan", "after", "value"),
    [
        ("Enable", person(), 2.0, "human"),
        ("Enable", machine(), 2.0, "machine_start"),  # Enable does not wait for the beep
        ("Enable", person("fax"), 2.0, "fax"),
        ("Enable", person("silence", talk=60), 30.0, "unknown"),  # MachineDetectionTimeout
        ("DetectMessageEnd", person(), 2.0, "human"),
        ("DetectMessageEnd", machine(6.0, "beep"), 6.0, "machine_end_beep"),
        ("DetectMessageEnd", machine(6.0, "silence"), 6.0, "machine_end_silence"),
        ("DetectMessageEnd", machine(6.0, "other"), 6.0, "machine_end_other"),
        ("DetectMessageEnd", machine(45.0, talk=60), 30.0, "unknown"),  # greeting past timeout
        ("DetectMessageEnd", person("fax"), 2.0, "fax"),
        (None, machine(), 0.0, None),  # no AMD asked: answered_by stays empty
    ],
)
def test_answered_by_is_set_as_twilio_does_for_each_mode(clock, mode, plan, after, value):
    with Simulator(clock=clock, plan=lambda to, nth: plan) as sim:
        calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, 5, clock=clock)
        sid = calls.create(
            "+12125550100", FROM, CallParams(twiml=HUMAN, machine_detection=mode)
        ).sid
        answer = clock() + 2.5  # queue 0.5 s, ring 2 s

        def at(t: float) -> tuple[str, str | None]:
            clock.now = t
            info = calls.fetch(sid)
            return info.status, info.answered_by

        assert at(answer - 0.1) == ("ringing", None)
        if after:  # answered, but AMD has not decided yet
            assert at(answer) == at(answer + after - 0.1) == ("in-progress", None)
        assert at(answer + after) == ("in-progress", value)
        assert contract_violations(sim) == []


def test_an_update_with_twiml_is_recorded_and_an_ended_call_gets_21220(clock, sim):
    calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, 5, clock=clock)
    sid = calls.create("+12125550100", FROM, CallParams(twiml=HUMAN)).sid
    clock.advance(10)
    info = calls.redirect(sid, "<Response><Say>Bye</Say></Response>", None)
    assert info.status == "in-progress"
    calls.redirect(sid, None, "https://example.com/vm.xml")
    [call] = sim.calls()
    assert call.message == HUMAN
    assert call.redirects == [
        (clock(), "<Response><Say>Bye</Say></Response>"),
        (clock(), "https://example.com/vm.xml"),
    ]
    clock.advance(60)  # the call has ended: too late, and only this call's problem
    with pytest.raises(TwilioFailure) as failure:
        calls.redirect(sid, "<Response/>", None)
    assert (failure.value.kind, failure.value.code) == ("rejected", 21220)
    assert len(call.redirects) == 2
    assert contract_violations(sim) == []


def test_the_default_plans_answer_some_calls_with_a_machine() -> None:
    sample = [default_plan(7, f"+1212555{i:04d}", 0) for i in range(2000)]
    answered = [p for p in sample if p.outcome == "completed"]
    share = sum(p.party == "machine" for p in answered) / len(answered)
    assert share == pytest.approx(0.28, abs=0.04)
    assert {p.party for p in answered} == {"human", "machine", "fax", "silence"}
    assert all(p.greeting_s < p.talk_s for p in answered if p.party == "machine")


# -- the engine: who hears what ----------------------------------------------------------------


def test_exactly_the_machine_answered_calls_get_the_machine_message_once(store, sim, clock):
    h = drive(store, sim, clock, list(PLANS), AMD_CALL)
    assert h.run_until_done(step=0.25) == RunStatus.COMPLETED
    by_number = {c.to: c for c in sim.calls()}
    assert set(by_number) == set(PLANS)  # each dialled once
    names = {lead.e164: lead.fields["name"] for lead in leads_for(list(PLANS))}
    for number, call in by_number.items():
        assert call.message == HUMAN.replace("{name}", html.escape(names[number]))
        if number in MACHINES:
            [(at, message)] = call.redirects
            assert message == MACHINE.replace("{name}", html.escape(names[number]))
            assert "Ann &amp; &lt;Co&gt;" in message
            # polled about every 0.5 s while AMD decides (poll_interval is 2 s): the message
            # starts at most 0.5 s (plus one 0.25 s step of this test) after the verdict
            assert 0 <= at - detected_at(call) <= 0.75
        else:
            assert call.redirects == [], number  # people, a fax, a silent line: never
    rows = {r["e164"]: r for r in report.report_rows(store, h.dialer.run_id, clock())}
    assert {n for n, r in rows.items() if r["voicemail"] == "dropped"} == MACHINES
    assert {n for n, r in rows.items() if r["voicemail"] is not None} == MACHINES
    assert rows["+12125550100"]["answered_by"] == "machine_end_beep"
    assert rows["+12125550104"]["answered_by"] == "unknown"
    stats = report.status_object(store, h.dialer.run_id, clock())["stats"]
    assert stats["machine_rate"] == round(3 / 7, 4)  # of the 7 calls placed, busy included
    dropped = [e for e in h.events if e.kind == "voicemail-dropped"]
    assert sorted(str(e.data["to"]) for e in dropped) == sorted(MACHINES)
    assert render.describe(dropped[0]) == (
        "a machine answered +12125550100 (Ann & <Co> 0) (machine_end_beep): voicemail message sent"
    )
    assert contract_violations(sim) == []


def test_an_answered_call_is_polled_fast_only_until_amd_decides(store, clock):
    """AMD says human 5 s after the answer: once polling sees the call answered, it is fetched
    about every 0.5 s until the verdict, then every poll_interval (2 s) as any call."""
    with Simulator(clock=clock, plan=lambda to, nth: person(detect=5.0)) as sim:
        h = drive(store, sim, clock, ["+12125550101"], AMD_CALL)
        assert h.run_until_done(step=0.25) == RunStatus.COMPLETED
        [call] = sim.calls()
    answer, decided = call.answer_at(1.0), call.answer_at(1.0) + 5.0
    fetches = [r.at for r in sim.requests() if r.method == "GET" and call.sid in r.path]
    seen_answered = min(t for t in fetches if t >= answer)
    assert seen_answered - answer <= 2.0  # the answer itself is seen at the usual pace
    during = [t for t in fetches if seen_answered <= t <= decided]
    after = [t for t in fetches if decided < t < call.ended_at(1.0)]
    assert len(during) >= 6 and max(during) == decided
    assert all(b - a == 0.5 for a, b in zip(during, during[1:], strict=False))
    assert after and all(b - a == 2.0 for a, b in zip(after, after[1:], strict=False))
    assert call.redirects == []


def test_without_a_machine_message_nothing_is_redirected_but_machines_are_counted(
    store, sim, clock
):
    call = {"twiml": HUMAN, "machine_detection": "DetectMessageEnd"}
    h = drive(store, sim, clock, list(PLANS), call)
    assert h.run_until_done(step=0.25) == RunStatus.COMPLETED
    assert all(c.redirects == [] for c in sim.calls())
    stats = report.stats(store, h.dialer.run_id, clock())
    assert stats["machine_rate"] == round(3 / 7, 4)  # still measured: AMD was asked for


def test_a_machine_url_is_filled_per_lead_and_sent_as_url(store, clock, sim):
    call = {"twiml": HUMAN, "machine_detection": "Enable",
            "machine_url": "https://example.com/vm?who={name}"}  # fmt: skip
    h = drive(store, sim, clock, ["+12125550100"], call)
    assert h.run_until_done(step=0.25) == RunStatus.COMPLETED
    [(at, url)] = sim.calls()[0].redirects
    assert url == "https://example.com/vm?who=Ann%20%26%20%3CCo%3E%200"
    [create] = sim.creates()
    assert create.params["MachineDetection"] == ["Enable"]
    assert contract_violations(sim) == []


def test_a_redirect_twilio_may_have_processed_is_never_sent_again(store, sim, clock):
    """A 500 after the update: the machine may be hearing the message already, and a second
    update would restart it. Recorded `unconfirmed`, said in one line, never resent."""
    sim.faults = Faults(p_500_after_redirect=1.0)
    h = drive(store, sim, clock, sorted(MACHINES), AMD_CALL)
    assert h.run_until_done(step=0.25) == RunStatus.COMPLETED
    assert [len(c.redirects) for c in sim.calls()] == [1, 1, 1]
    rows = report.report_rows(store, h.dialer.run_id, clock())
    assert [r["voicemail"] for r in rows] == ["unconfirmed"] * 3
    event = next(e for e in h.events if e.kind == "voicemail-not-dropped")
    assert render.describe(event) == (
        "voicemail message for +12125550106 (Ann & <Co> 2) unconfirmed: "
        "Internal Server Error (Twilio error 20500)"
    )


def redirects_sent(sim: Simulator) -> list[int]:
    """The HTTP status of every update that carried a message."""
    return [
        r.status
        for r in sim.requests()
        if r.method == "POST" and "/Calls/" in r.path and "Twiml" in r.params
    ]


def test_a_redirect_refused_with_429_is_sent_again_and_lands_once(store, sim, clock):
    """429: certainly not processed, so the message goes out again on a later poll."""
    sim.faults = Faults(p_429_redirect=1.0)
    h = drive(store, sim, clock, ["+12125550100"], AMD_CALL)
    while 429 not in redirects_sent(sim):
        h.tick()
        clock.advance(0.25)
    sim.faults = Faults()
    assert h.run_until_done(step=0.25) == RunStatus.COMPLETED
    assert redirects_sent(sim) == [429, 200]
    [call] = sim.calls()
    [(at, _)] = call.redirects
    assert at - detected_at(call) <= 3.0  # a poll interval and its jitter later, at most
    [row] = report.report_rows(store, h.dialer.run_id, clock())
    assert row["voicemail"] == "dropped"


def test_retry_on_machine_dials_the_person_again_later(store, clock):
    nth_plan = {0: machine(), 1: person()}  # a machine first, the person on the retry
    with Simulator(clock=clock, plan=lambda to, nth: nth_plan[nth]) as sim:
        dialing = {"retry_on": ["busy", "machine"], "max_attempts": 2, "retry_delay": 60}
        h = drive(store, sim, clock, ["+12125550100"], AMD_CALL, dialing)
        assert h.run_until_done(step=0.5) == RunStatus.COMPLETED
        first, second = sim.calls()
        assert second.created_at >= first.ended_at(1.0) + 60
        assert len(first.redirects) == 1 and second.redirects == []
    [row] = report.report_rows(store, h.dialer.run_id, clock())
    assert (row["outcome"], row["attempts"], row["answered_by"]) == ("answered", 2, "human")
    assert row["voicemail"] is None  # the report shows the last call: the person's


def test_without_retry_on_machine_a_machine_answer_is_final(store, sim, clock):
    dialing = {"retry_on": ["busy"], "max_attempts": 3}
    h = drive(store, sim, clock, ["+12125550100"], AMD_CALL, dialing)
    assert h.run_until_done(step=0.5) == RunStatus.COMPLETED
    assert len(sim.calls()) == 1


# -- configuration ---------------------------------------------------------------------------------


def config(tmp_path: Path, sim: Simulator, call: str, dialing: str = "") -> Path:
    path = write_config(tmp_path / "dialer.yaml", sim, twiml="<Response/>")
    text = path.read_text().replace("call:\n", "call:\n" + textwrap.indent(call, "  "), 1)
    path.write_text(text + textwrap.indent(dialing, "  "))
    return path


def dialer(*args: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "DIALER_"))}
    argv = [sys.executable, "-m", "dialer_cli", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60, env=env)


@pytest.mark.parametrize(
    ("call", "dialing", "message"),
    [
        ('machine_twiml: "<Response/>"\n', "", "call.machine_twiml needs call.machine_detection"),
        (
            "machine_url: https://x.example/vm\n",
            "",
            "call.machine_url needs call.machine_detection",
        ),
        ("", "retry_on: [machine]\n", "dialing.retry_on: machine needs call.machine_detection"),
        (
            'machine_detection: Enable\nmachine_twiml: "<Response/>"\n'
            "machine_url: https://x.example/vm\n",
            "",
            "call.machine_twiml and call.machine_url are both set; keep one",
        ),
        ("machine_detection: Enable\nmachine_url: ftp://x\n", "", "call.machine_url: expected"),
    ],
)
def test_a_machine_setting_that_could_never_apply_is_refused(tmp_path, sim, call, dialing, message):
    path = config(tmp_path, sim, call, dialing)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_settings(path, {})


def test_the_machine_settings_load_and_a_flag_layer_may_swap_twiml_for_url(tmp_path, sim):
    call = 'machine_detection: DetectMessageEnd\nmachine_twiml: "<Response/>"\n'
    settings = load_settings(config(tmp_path, sim, call, "retry_on: [machine, busy]\n"), {})
    assert settings.call.machine_twiml == "<Response/>"
    assert settings.dialing.retry_on == ("machine", "busy")
    swapped = load_settings(tmp_path / "dialer.yaml", {}, {"call.machine_url": "https://x.io/v"})
    assert (swapped.call.machine_twiml, swapped.call.machine_url) == (None, "https://x.io/v")


def test_start_refuses_a_machine_message_naming_a_missing_column(tmp_path, sim):
    call = (
        'machine_detection: Enable\nmachine_twiml: "<Response><Say>{nickname}</Say></Response>"\n'
    )
    path = config(tmp_path, sim, call)
    leads = tmp_path / "leads.csv"
    leads.write_text("name,phone\nAda,+12125550100\n")
    proc = dialer("start", leads, "--config", path, "--db", tmp_path / "d.db", "--yes")
    assert proc.returncode == 2, proc.stderr
    assert "call.machine_twiml names {nickname}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert sim.creates() == []


def test_start_refuses_a_machine_message_too_long_once_filled(tmp_path, sim):
    call = 'machine_detection: Enable\nmachine_twiml: "<Response><Say>{note}</Say></Response>"\n'
    path = config(tmp_path, sim, call)
    leads = tmp_path / "leads.csv"
    leads.write_text(f"name,phone,note\nAda,+12125550100,hi\nBob,+12125550101,{'x' * 4000}\n")
    proc = dialer("start", leads, "--config", path, "--db", tmp_path / "d.db", "--yes")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"error: {leads}: line 3: the filled call.machine_twiml is 4032 characters; "
        "Twilio accepts at most 4000"
    )
    assert sim.creates() == []


# -- the database ----------------------------------------------------------------------------------


def test_a_schema_1_database_with_rows_upgrades_in_place(tmp_path):
    """The database the release before this one wrote keeps every row; its calls have no
    machine message to report."""
    path = tmp_path / "old.db"
    shutil.copy(ROOT / "tests" / "data" / "schema-1.db", path)
    store = Store.open(path)
    try:
        version = store.conn.execute("PRAGMA user_version").fetchone()[0]
        assert version == SCHEMA_VERSION >= 2
        rows = list(report.report_rows(store, 1, 100))
        assert len(rows) == 20 and sum(r["outcome"] == "answered" for r in rows) == 10
        assert {r["voicemail"] for r in rows} == {None}
        assert report.stats(store, 1, 100)["machine_rate"] is None
    finally:
        store.close()


# -- kill -9 between the machine message and its record --------------------------------------------


def voicemail_campaign(tmp_path: Path, sim: Simulator) -> Campaign:
    c = make_campaign(tmp_path / "c", sim, 6, imported=False)
    text = c.cfg.read_text().replace(
        "call:\n",
        f'call:\n  machine_detection: DetectMessageEnd\n  machine_twiml: "{MACHINE}"\n',
        1,
    )
    c.cfg.write_text(text)
    settings = load_settings(c.cfg, {})
    store = Store.open(c.db)
    try:
        target = runner.twilio_target(settings)
        c.run_id = intake.import_run(store, read_csv(c.csv), settings, target, time.time())
    finally:
        store.close()
    return c


def real_time_plan(to: str, nth: int) -> CallPlan:
    """Even leads reach a machine (its greeting ends after 0.3 s), odd ones a person."""
    if int(to[-1]) % 2 == 0:
        return CallPlan("completed", 0.05, 0.1, 1.5, party="machine", greeting_s=0.3)
    return CallPlan("completed", 0.05, 0.1, 0.6, party="human", detect_s=0.2)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_voicemail_pending", "after_redirect_sent"])
def test_a_kill_around_the_machine_message_never_sends_it_twice(tmp_path, point):
    with Simulator(plan=real_time_plan) as sim:
        c = voicemail_campaign(tmp_path, sim)
        crashed = c.crash(point, 1)
        assert c.wait(crashed) == -9, crashed.tail()
        killed = [x for x in c.attempts() if x["voicemail"] == "pending"]
        assert len(killed) == 1  # recorded before the update left
        c.finish()
        calls = {x.sid: x for x in sim.calls()}
        machines = [x for x in calls.values() if x.plan.party == "machine"]
        assert len(machines) == 3
        assert all(x.redirects == [] for x in calls.values() if x.plan.party == "human")
        sent = 1 if point == "after_redirect_sent" else 0
        assert len(calls[killed[0]["call_sid"]].redirects) == sent  # never a second update
        others = [x for x in machines if x.sid != killed[0]["call_sid"]]
        assert all(len(x.redirects) == 1 for x in others)
        results = {x["call_sid"]: x["voicemail"] for x in c.attempts() if x["call_sid"]}
        assert results[killed[0]["call_sid"]] == "unconfirmed"
        assert sorted(results[x.sid] for x in others) == ["dropped", "dropped"]
        status = c.status()
        assert status["status"] == "completed"
        report_proc = c.dialer("report", c.run_id, "--format", "json", "--db", c.db)
        assert report_proc.popen.wait(30) == 0, report_proc.tail()
        rows = json.loads(report_proc.out.read_text())
        assert sorted(str(r["voicemail"]) for r in rows) == [
            "None", "None", "None", "dropped", "dropped", "unconfirmed",
        ]  # fmt: skip
