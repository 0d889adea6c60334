"""What each call cost: prices collected from the simulator through the real twilio client, with
a bounded number of list requests, shown in the report, in stats.cost and in the summary line."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dialer_cli import prices, render, report, runner
from dialer_cli import store as store_module
from dialer_cli.cli import app
from dialer_cli.errors import InputError
from dialer_cli.models import RunStatus
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator
from dialer_cli.store import Store
from dialer_cli.twilio_adapter import TwilioCalls
from tests.conftest import FROM, ROOT, FakeClock, fixed_plan, make_leads, new_run
from tests.contract import validate_request

cli = CliRunner()


def price_requests(sim: Simulator) -> list:
    """The list requests that collect prices (nothing else asks for completed calls)."""
    return [
        r
        for r in sim.requests()
        if r.method == "GET" and r.path.endswith("/Calls.json") and r.params.get("Status")
    ]


@pytest.fixture
def priced_sim(request: pytest.FixtureRequest, clock: FakeClock) -> Iterator[Simulator]:
    """A simulator that prices calls `price_delay_s` simulated seconds after they end."""
    outcome, delay = getattr(request, "param", ("completed", 30.0))
    with Simulator(clock=clock, plan=fixed_plan(outcome), price_delay_s=delay) as sim:
        yield sim


def drive(store: Store, sim: Simulator, clock: FakeClock, run_id: int) -> tuple[str, list]:
    """The product's own driver on the fake clock: every sleep advances it."""
    target = runner.Target(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, 5, FROM)
    calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, http_timeout=5)
    events: list = []
    status = runner.drive(
        store, run_id, target, on_event=events.append, clock=clock, sleep=clock.advance, calls=calls
    )
    return status, events


def test_every_answered_call_gets_its_price_for_far_less_than_a_request_per_call(
    store, priced_sim, clock
):
    run_id = new_run(store, make_leads(40), concurrency=2)
    status, events = drive(store, priced_sim, clock, run_id)
    assert status == RunStatus.COMPLETED
    rows = list(report.report_rows(store, run_id, clock.now))
    assert {(r["price"], r["price_unit"]) for r in rows} == {("-0.01300", "USD")}  # 10 s calls
    cost = report.stats(store, run_id, clock.now)["cost"]
    assert cost == {"amount": 0.52, "unit": "USD", "calls_without_price": 0}  # 40 x 0.013
    asked = price_requests(priced_sim)
    finished = next(e.at for e in events if e.kind == "run-finished")
    during = [r.at for r in asked if r.at < finished]
    assert len(during) >= 3 and all(b - a >= prices.EVERY for a, b in pairwise(during))
    # a request a minute while the run goes, and a few at its end: not one per call
    allowed = (finished - store.get_run(run_id).started_at) / prices.EVERY + 5
    assert len(asked) <= allowed < 40 / 3  # 8 for these 40 calls
    assert {r.params["Status"][0] for r in asked} == {"completed"}
    assert [validate_request(r.method, r.path, r.params) for r in asked] == [[]] * len(asked)
    # filtered on the day form Twilio documents (whether it honours a time of day is unverified)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d", r.params["EndTime>"][0]) for r in asked)


@pytest.mark.parametrize("priced_sim", [("completed", 1e9)], indirect=True)
def test_prices_that_never_come_are_waited_for_a_bounded_time_then_counted(
    store, priced_sim, clock
):
    run_id = new_run(store, make_leads(4), concurrency=2)
    status, events = drive(store, priced_sim, clock, run_id)
    finished = store.get_run(run_id).finished_at
    assert status == RunStatus.COMPLETED and clock.now - finished <= prices.FINAL_WAIT
    [waiting] = [e for e in events if e.kind == "prices-waiting"]
    assert waiting.data["calls"] == 4 and "price 4 calls" in render.describe(waiting)
    cost = report.cost(store, run_id)
    assert cost == {"amount": 0.0, "unit": None, "calls_without_price": 4}
    line = render.summary_line(runner.snapshot(store, run_id, clock.now), None, cost)
    assert line.endswith("; cost 0 (4 calls without a price yet)")
    assert len(price_requests(priced_sim)) <= prices.FINAL_WAIT / prices.FINAL_EVERY + 2


@pytest.mark.parametrize("priced_sim", [("busy", 30.0)], indirect=True)
def test_calls_never_answered_cost_nothing_and_nobody_waits_for_their_price(
    store, priced_sim, clock
):
    run_id = new_run(store, make_leads(4), concurrency=2)
    status, events = drive(store, priced_sim, clock, run_id)
    assert status == RunStatus.COMPLETED and clock.now == store.get_run(run_id).finished_at
    assert price_requests(priced_sim) == [] and "prices-waiting" not in {e.kind for e in events}
    assert report.cost(store, run_id) == {"amount": 0.0, "unit": None, "calls_without_price": 0}
    assert all(r["price"] is None for r in report.report_rows(store, run_id, clock.now))


def test_twilio_unreachable_leaves_prices_missing_and_the_run_alone(store, priced_sim, clock):
    run_id = new_run(store, make_leads(2), concurrency=2)
    drive(store, priced_sim, clock, run_id)
    store.conn.execute("UPDATE calls SET price=NULL, price_unit=NULL")
    calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, priced_sim.url, http_timeout=5)
    collector = prices.PriceCollector(store, calls, run_id)
    priced_sim.go_down()
    assert collector.collect(clock.now) == 2  # no exception: asked again next time
    # at the end of a run, an unreachable Twilio ends the wait for prices at once
    assert collector.finish(clock=clock, sleep=lambda s: pytest.fail("waited")) == 2
    priced_sim.come_up()
    assert collector.collect(clock.now) == 0
    assert report.cost(store, run_id)["amount"] == 0.026


def test_a_schema_1_database_upgrades_in_place_and_keeps_every_row(tmp_path):
    path = tmp_path / "old.db"
    shutil.copy(ROOT / "tests" / "data" / "schema-1.db", path)
    upgraded = Store.open(path)
    assert upgraded.conn.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
    assert upgraded.counts(1)["total_leads"] == 18
    assert report.cost(upgraded, 1) == {"amount": 0.0, "unit": None, "calls_without_price": 10}
    [sid] = upgraded.read(
        "SELECT call_sid FROM calls WHERE run_id = 1 AND twilio_status = 'completed' LIMIT 1"
    )[0]
    assert upgraded.set_prices([(sid, "-0.01300", "USD")]) == 1
    rows = {r["call_sid"]: r for r in report.report_rows(upgraded, 1)}
    assert (rows[sid]["price"], rows[sid]["price_unit"]) == ("-0.01300", "USD")
    upgraded.close()


def test_a_simulated_run_shows_its_cost_in_status_runs_report_and_summary(tmp_path: Path):
    db = tmp_path / "d.db"
    sample = ROOT / "leads.sample.csv"
    result = cli.invoke(
        app, ["start", str(sample), "--simulate", "--sim-speed", "100", "--db", str(db)]
    )
    assert result.exit_code == 0, result.stderr
    cost = json.loads(cli.invoke(app, ["status", "1", "--json", "--db", str(db)]).stdout)["stats"][
        "cost"
    ]
    [listed] = json.loads(cli.invoke(app, ["runs", "--json", "--db", str(db)]).stdout)
    assert listed["stats"]["cost"] == cost
    rows = json.loads(cli.invoke(app, ["report", "1", "--format", "json", "--db", str(db)]).stdout)
    answered = [r for r in rows if r["outcome"] == "answered"]
    priced = [r for r in answered if r["price"]]
    assert cost["unit"] == "USD" and cost["calls_without_price"] == len(answered) - len(priced)
    assert cost["amount"] == round(-sum(float(r["price"]) for r in priced), 5) > 0
    assert all(r["price"] is None for r in rows if r["outcome"] != "answered")
    amount = f"{cost['amount']:.5f}".rstrip("0")
    assert f"; cost {amount} USD" in result.stdout.strip().splitlines()[-1]


def test_start_json_ends_with_the_status_object_and_its_cost(tmp_path: Path):
    args = ["start", str(ROOT / "leads.sample.csv"), "--simulate", "--sim-speed", "200", "--json"]
    result = cli.invoke(app, [*args, "--db", str(tmp_path / "d.db")])
    assert result.exit_code == 0, result.stderr
    last = json.loads(result.stdout.strip().splitlines()[-1])
    status = json.loads(
        cli.invoke(app, ["status", "1", "--json", "--db", str(tmp_path / "d.db")]).stdout
    )
    assert last["event"] == "status" and last["stats"]["cost"] == status["stats"]["cost"]
    assert last["stats"]["cost"]["unit"] == "USD"


def test_a_run_finished_while_a_resume_waited_for_its_lock_is_not_driven_again(
    store, priced_sim, clock
):
    """`resume` looks at the run, then takes its lock; its driver may finish the run in between
    (found by the explorer under load: the resume exited 0, having marked it running again). The
    resume says it is completed, and the run's record stays as its driver left it."""
    run_id = new_run(store, make_leads(3), concurrency=3)
    assert drive(store, priced_sim, clock, run_id)[0] == RunStatus.COMPLETED
    before = store.get_run(run_id)
    with pytest.raises(InputError, match=f"run {run_id} is already completed; nothing to resume"):
        drive(store, priced_sim, clock, run_id)
    assert store.get_run(run_id) == before
