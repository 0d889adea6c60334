"""Campaign rules through the real client and the simulator: retries, calling hours,
do-not-call, pacing, caller ID, templates, dry run."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from typer.testing import CliRunner

from dialer_cli import intake, rules, runner
from dialer_cli.cli import app
from dialer_cli.models import Lead, RunStatus
from dialer_cli.simulator import CallPlan
from tests.conftest import make_leads, new_run, write_config
from tests.test_cli import dump, leads_csv

cli = CliRunner()
NY, LA = "+12125550101", "+14155550142"
WEDNESDAY_0830_NY = datetime(2026, 12, 2, 13, 30, tzinfo=UTC).timestamp()


def lead(e164: str, line: int = 2, **fields: str) -> Lead:
    return Lead(line=line, phone=e164, e164=e164, fields={"phone": e164, **fields})


# -- calling hours ---------------------------------------------------------------------------


def test_hours_window_in_local_time_and_days():
    hours = rules.Hours.parse("09:00-20:00", ["mon", "tue", "wed", "thu", "fri"])
    ny = ("America/New_York",)
    assert not hours.open_all(ny, WEDNESDAY_0830_NY)
    assert hours.open_all(ny, WEDNESDAY_0830_NY + 1800)
    assert hours.next_open(ny, WEDNESDAY_0830_NY) == WEDNESDAY_0830_NY + 1800
    saturday_noon = datetime(2026, 12, 5, 12, tzinfo=ZoneInfo("America/New_York")).timestamp()
    monday_nine = datetime(2026, 12, 7, 9, tzinfo=ZoneInfo("America/New_York")).timestamp()
    assert not hours.open_all(ny, saturday_noon)
    assert hours.next_open(ny, saturday_noon) == monday_nine


def test_a_number_in_several_neighbouring_zones_must_be_in_hours_in_all():
    hours = rules.Hours.parse("09:00-20:00", None)
    both = ("America/New_York", "America/Chicago")
    assert not hours.open_all(both, WEDNESDAY_0830_NY + 1800)  # 09:00 NY, 08:00 Chicago
    assert hours.next_open(both, WEDNESDAY_0830_NY) == WEDNESDAY_0830_NY + 1800 + 3600


def test_zones_come_from_the_column_the_number_or_the_fallback():
    assert rules.lead_zones(NY, None, "UTC") == ("America/New_York",)
    assert rules.lead_zones(NY, "Europe/Paris", "UTC") == ("Europe/Paris",)
    assert rules.lead_zones("+18005550100", None, "America/Denver") == ("America/Denver",)
    assert rules.lead_zones(NY, "Not/AZone", "UTC") == ("America/New_York",)


def test_nobody_is_dialled_outside_their_window(store, sim, harness, clock):
    clock.now = WEDNESDAY_0830_NY
    zones = intake.zones_rule("09:00-20:00", "UTC")
    run_id = new_run(store, [lead(NY, 2), lead(LA, 3)], zones=zones)
    hours = rules.Hours.parse("09:00-20:00", None)
    h = harness(run_id, rules={"hours": hours})
    h.tick()
    assert not sim.calls()
    snap = runner.snapshot(store, run_id, clock.now)
    assert snap["waiting_hours"] == 2
    assert snap["next_window_at"] == "2026-12-02T14:00:00Z"
    assert h.run_until_done(step=60.0) == RunStatus.COMPLETED
    for call in sim.calls():
        zone = "America/New_York" if call.to == NY else "America/Los_Angeles"
        assert hours.open_in(zone, call.created_at), call
    created = {c.to: c.created_at for c in sim.calls()}
    assert created[NY] - WEDNESDAY_0830_NY <= 30 * 60 + 60  # at 09:00 New York time
    assert created[LA] - WEDNESDAY_0830_NY >= 3.5 * 3600  # at 09:00 Los Angeles time


def test_no_wait_leaves_a_waiting_run_resumable(store, sim, harness, clock):
    clock.now = WEDNESDAY_0830_NY
    run_id = new_run(store, [lead(NY)], zones=intake.zones_rule("09:00-20:00", "UTC"))
    h = harness(run_id, rules={"hours": rules.Hours.parse("09:00-20:00", None)}, no_wait=True)
    assert h.run_until_done(step=1.0) == RunStatus.STOPPED
    assert not sim.calls() and store.counts(run_id)["queued"] == 1


# -- retries ---------------------------------------------------------------------------------


def test_a_retry_waits_without_holding_a_slot_and_answered_calls_are_never_retried(
    store, sim, harness, clock
):
    busy_once = {NY}
    sim._plan = lambda to, nth: CallPlan(
        "busy" if to in busy_once and nth == 0 else "completed", queue_s=0.5, ring_s=2, talk_s=5
    )
    run_id = new_run(store, [lead(NY, 2), *make_leads(3, start=150)], concurrency=1)
    h = harness(run_id, max_attempts=3, retry_delay=600.0)
    for _ in range(20):
        h.tick()
        clock.advance(1)
    snap = runner.snapshot(store, run_id, clock.now)
    assert snap["waiting_retry"] == 1 and snap["in_progress"] <= 1
    assert len(sim.calls()) >= 3  # the others were dialled while NY waited
    assert h.run_until_done(step=5.0) == RunStatus.COMPLETED
    per_number = {c.to: 0 for c in sim.calls()}
    for c in sim.calls():
        per_number[c.to] += 1
    assert per_number[NY] == 2 and {v for k, v in per_number.items() if k != NY} == {1}


def test_permanent_rejections_are_never_retried(store, sim, harness):
    run_id = new_run(store, [lead("+15005550002")])
    h = harness(run_id, max_attempts=3, retry_on=("busy", "no-answer", "failed"), retry_delay=1.0)
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert len(sim.creates()) == 1 and store.counts(run_id)["outcomes"]["rejected"] == 1


# -- do-not-call -----------------------------------------------------------------------------


def test_a_number_added_to_do_not_call_mid_run_is_never_dialled(store, sim, harness):
    leads = make_leads(6)
    run_id = new_run(store, leads, concurrency=1)
    h = harness(run_id)
    h.tick()
    store.dnc_add([leads[4].e164], "test", 0)
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert leads[4].e164 not in {c.to for c in sim.calls()}
    assert store.skip_reasons(run_id) == {"do-not-call": 1}


def test_the_do_not_call_file_applies_at_import_and_mid_run(store, sim, harness, tmp_path):
    leads = make_leads(6)
    path = tmp_path / "dnc.txt"
    path.write_text(f"{leads[0].phone}\n")
    dnc = rules.DncFile(path, "US")
    run_id = new_run(store, leads, concurrency=1)
    h = harness(run_id, rules={"blocked": lambda n: "do-not-call" if n in dnc else None})
    h.tick()
    path.write_text(f"{leads[0].phone}\n(212) 555-{leads[5].e164[-4:]}\n")
    dnc.refresh()
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    dialled = {c.to for c in sim.calls()}
    assert leads[5].e164 not in dialled


def test_dnc_commands_and_import_skip(tmp_path):
    db = tmp_path / "d.db"
    assert cli.invoke(app, ["dnc", "add", "(212) 555-0100", "--db", str(db)]).exit_code == 0
    listed = json.loads(cli.invoke(app, ["dnc", "list", "--json", "--db", str(db)]).stdout)
    assert [r["e164"] for r in listed] == ["+12125550100"]
    bad = cli.invoke(app, ["dnc", "add", "12", "--db", str(db)])
    assert bad.exit_code == 2 and "12" in bad.stderr
    csv = leads_csv(tmp_path / "l.csv", 3)
    result = cli.invoke(
        app, ["start", str(csv), "--simulate", "--sim-speed", "500", "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    status = json.loads(cli.invoke(app, ["status", "1", "--json", "--db", str(db)]).stdout)
    assert status["skipped_reasons"] == {"do-not-call": 1} and status["total_leads"] == 2
    assert cli.invoke(app, ["dnc", "remove", "+12125550100", "--db", str(db)]).exit_code == 0
    file = tmp_path / "optout.csv"
    file.write_text("phone\n+1 212 555 0101\n(212) 555-0102\n")
    assert cli.invoke(app, ["dnc", "import", str(file), "--db", str(db)]).exit_code == 0
    listed = json.loads(cli.invoke(app, ["dnc", "list", "--json", "--db", str(db)]).stdout)
    assert [r["e164"] for r in listed] == ["+12125550101", "+12125550102"]


# -- pacing and caller ID ------------------------------------------------------------------


def test_pacing_holds_in_every_one_second_window(store, sim, harness, clock):
    run_id = new_run(store, make_leads(20), concurrency=10)
    h = harness(run_id, rules={"pacer": rules.Pacer(2)})
    while not h.tick().done:
        clock.advance(0.1)
    times = sorted(r.at for r in sim.creates())
    assert len(times) == 20
    for i, t in enumerate(times):
        assert sum(1 for u in times[i:] if u < t + 1.0) <= 2


def test_caller_id_prefers_the_area_then_the_country_then_rotates():
    pick = rules.CallerId(["+12125550100", "+14155550100", "+442079460000"])
    assert pick(NY) == "+12125550100" and pick(LA) == "+14155550100"
    assert pick("+442079461111") == "+442079460000"
    assert pick("+13125550100") in ("+12125550100", "+14155550100")
    assert {pick("+4930123456") for _ in range(3)} == set(pick.numbers)


# -- templates --------------------------------------------------------------------------------


def test_twiml_is_filled_with_escaped_lead_columns(store, sim, harness):
    run_id = new_run(store, [lead(NY, name="<Hangup/>&")])
    fake_run = store.get_run(run_id)
    settings = {"call": {"twiml": "<Response><Say>Hello {name}</Say></Response>"}}
    params = runner.params_for(fake_run.__class__(**{**fake_run.__dict__, "settings": settings}))
    h = harness(run_id, rules={"params_for": params})
    h.run_until_done(step=1.0)
    sent = sim.creates()[0].params["Twiml"][0]
    assert sent == "<Response><Say>Hello &lt;Hangup/&gt;&amp;</Say></Response>"


def test_url_templates_are_url_encoded():
    assert rules.fill_url("https://x.test/v?n={name}", {"name": "a b&c"}) == (
        "https://x.test/v?n=a%20b%26c"
    )


def test_a_template_naming_a_missing_column_fails_before_anything_is_written(tmp_path, sim):
    cfg = write_config(tmp_path / "c.yaml", sim, twiml="<Response><Say>{nickname}</Say></Response>")
    db = tmp_path / "d.db"
    result = cli.invoke(
        app, ["start", str(leads_csv(tmp_path / "l.csv", 2)), "--config", str(cfg), "--db", str(db)]
    )
    assert result.exit_code == 2 and "{nickname}" in result.stderr
    assert not sim.creates() and dump(db) == []


def test_filled_twiml_over_4000_characters_names_the_line(tmp_path, sim):
    cfg = write_config(tmp_path / "c.yaml", sim, twiml="<Response><Say>{name}</Say></Response>")
    csv = tmp_path / "l.csv"
    csv.write_text(f"name,phone\nA,{NY}\n{'x' * 4000},{LA}\n")
    db = tmp_path / "d.db"
    result = cli.invoke(app, ["start", str(csv), "--config", str(cfg), "--db", str(db)])
    assert result.exit_code == 2 and "line 3" in result.stderr and "4000" in result.stderr
    assert not sim.creates() and dump(db) == []


# -- dry run ----------------------------------------------------------------------------------


def test_dry_run_writes_nothing_and_counts_every_reason(tmp_path):
    db = tmp_path / "d.db"
    cli.invoke(app, ["dnc", "add", LA, "--db", str(db)])
    before = dump(db)
    csv = tmp_path / "l.csv"
    csv.write_text(f"name,phone\nA,{NY}\nB,{LA}\nC,12\nD,{NY}\nE,+13125550100\n")
    result = cli.invoke(
        app, ["start", str(csv), "--simulate", "--dry-run", "--json", "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["rows"] == 5 and plan["would_dial"] == 2
    assert {k: v["count"] for k, v in plan["skipped"].items()} == {
        "do-not-call": 1,
        "invalid-number": 1,
        "duplicate": 1,
    }
    assert plan["skipped"]["invalid-number"]["examples"][0]["line"] == 4
    assert dump(db) == before
    text = cli.invoke(app, ["start", str(csv), "--simulate", "--dry-run", "--db", str(db)])
    assert text.exit_code == 0 and "would dial 2" in text.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("name,number\nA,1\n")
    assert cli.invoke(app, ["start", str(bad), "--simulate", "--dry-run"]).exit_code == 2


def test_dry_run_reports_leads_outside_calling_hours_now(tmp_path, sim):
    today = datetime.now(ZoneInfo("America/New_York")).weekday()
    other_day = rules.DAYS[(today + 2) % 7]
    cfg = write_config(tmp_path / "c.yaml", sim)
    extra = f'  calling_hours: "00:00-23:59"\n  calling_days: [{other_day}]\n'
    cfg.write_text(cfg.read_text() + extra)
    csv = leads_csv(tmp_path / "l.csv", 2)
    result = cli.invoke(app, ["start", str(csv), "--config", str(cfg), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outside_hours_now"]["count"] == 2
