"""--metrics-file: the run's metrics in Prometheus' text format, parsed back with
prometheus_client's own parser (never a regex of ours), written atomically while the run goes
and once at the end with the exit status."""

from __future__ import annotations

import json
import stat
from datetime import datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from dialer_cli import metrics, runner
from dialer_cli.cli import app
from dialer_cli.models import RunStatus
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator
from dialer_cli.twilio_adapter import TwilioCalls
from tests.conftest import FROM, ROOT, T0, fixed_plan, make_leads, new_run, write_config

cli = CliRunner()


def parse(text: str) -> dict[str, list]:
    """Family name -> samples, as Prometheus itself would read the file."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(families: dict[str, list], name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    [found] = [
        s.value
        for f in families.values()
        for s in f
        if s.name == name and labels.items() <= s.labels.items()
    ]
    return found


def invoke(*args: object):
    return cli.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_a_run_ends_with_its_metrics_written_for_the_textfile_collector(tmp_path: Path):
    db, prom = tmp_path / "d.db", tmp_path / "textfile" / "dialer.prom"
    prom.parent.mkdir()
    sample = ROOT / "leads.sample.csv"
    result = invoke("start", sample, "--simulate", "--sim-speed", 100, "--db", db,
                    "--metrics-file", prom)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    snap = json.loads(invoke("status", 1, "--json", "--db", db).stdout)
    assert [p.name for p in prom.parent.iterdir()] == ["dialer.prom"]  # no temporary file left
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644  # node_exporter runs as another user
    families = parse(prom.read_text())
    assert all(
        s.labels["run_id"] == "1" and s.labels["campaign"] == ""
        for f in families.values()
        for s in f
    )
    assert value(families, "dialer_run_status", status="completed") == 1
    assert sum(s.value for s in families["dialer_run_status"]) == 1
    leads = {s.labels["state"]: s.value for s in families["dialer_leads"]}
    assert leads["completed"] == snap["completed"] and leads["skipped"] == snap["skipped"]
    assert sum(leads.values()) == snap["total_leads"] + snap["skipped"]
    assert families["dialer_calls"][0].name == "dialer_calls_total"  # a counter, by convention
    calls = {s.labels["outcome"]: s.value for s in families["dialer_calls"]}
    assert calls == {k: float(v) for k, v in snap["outcomes"].items()}  # one call per lead here
    assert value(families, "dialer_calls_in_flight") == 0
    assert value(families, "dialer_writeback_pending") == 0
    cost = snap["stats"]["cost"]
    assert value(families, "dialer_cost", currency="USD") == cost["amount"] > 0
    assert value(families, "dialer_calls_without_price") == cost["calls_without_price"]
    finished = datetime.fromisoformat(snap["finished_at"].replace("Z", "+00:00")).timestamp()
    assert abs(value(families, "dialer_last_success_timestamp_seconds") - finished) < 1
    assert value(families, "dialer_exit_status") == 0


def test_while_the_run_goes_the_file_is_rewritten_every_15_seconds(store, tmp_path, clock):
    prom = tmp_path / "dialer.prom"
    with Simulator(clock=clock, plan=fixed_plan(talk=40.0)) as sim:
        run_id = new_run(store, make_leads(9), concurrency=3)
        written = metrics.MetricsFile(prom, store, run_id)
        seen: list[tuple[float, dict]] = []

        def tend(now: float) -> None:
            if written.tend(now):
                seen.append((now, parse(prom.read_text())))

        target = runner.Target(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, 5, FROM)
        calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, http_timeout=5)
        status = runner.drive(store, run_id, target, on_event=lambda e: None, clock=clock,
                              sleep=clock.advance, calls=calls, tend=tend)  # fmt: skip
    assert status == RunStatus.COMPLETED
    times = [t for t, _ in seen]
    assert times[0] == T0 and len(times) >= 8  # three waves of ~43 s
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert all(metrics.EVERY <= gap <= metrics.EVERY + 2.0 for gap in gaps)  # 2 s: a poll
    for _, families in seen:
        assert value(families, "dialer_run_status", status="running") == 1
        assert "dialer_exit_status" not in families  # only once the process ends
        assert 0 <= value(families, "dialer_calls_in_flight") <= 3
    assert max(value(f, "dialer_calls_in_flight") for _, f in seen) == 3
    answered = [value(f, "dialer_calls_total", outcome="answered") for _, f in seen]
    assert answered == sorted(answered) and answered[0] == 0 < answered[-1]


def test_a_failed_run_writes_its_exit_status_and_keeps_the_last_success(tmp_path: Path):
    db, prom, csv = tmp_path / "d.db", tmp_path / "dialer.prom", tmp_path / "leads.csv"
    csv.write_text("name,phone\nAda,+12125550100\nBob,+12125550101\n", encoding="utf-8")
    with Simulator(plan=fixed_plan(ring=0.1, talk=0.1), price_delay_s=0.5) as sim:
        config = write_config(tmp_path / "c.yaml", sim)
        first = invoke(
            "start", csv, "--config", config, "--db", db, "--yes", "--metrics-file", prom
        )
        assert first.exit_code == 0, first.stderr
        succeeded = value(parse(prom.read_text()), "dialer_last_success_timestamp_seconds")
        assert succeeded > T0
        config.write_text(config.read_text().replace(DEFAULT_AUTH_TOKEN, "wrong-token"))
        failed = invoke("start", csv, "--new", "--config", config, "--db", db, "--yes",
                        "--metrics-file", prom)  # fmt: skip
    assert failed.exit_code == 1 and "credentials" in failed.stderr
    families = parse(prom.read_text())
    assert value(families, "dialer_run_status", run_id="2", status="failed") == 1
    assert value(families, "dialer_exit_status") == 1
    assert value(families, "dialer_last_success_timestamp_seconds") == succeeded  # run 1's


def test_a_run_stopped_by_its_deadline_writes_exit_status_3(tmp_path: Path):
    db, prom = tmp_path / "d.db", tmp_path / "dialer.prom"
    result = invoke("start", ROOT / "leads.sample.csv", "--simulate", "--max-duration", "0s",
                    "--db", db, "--metrics-file", prom)  # fmt: skip
    assert result.exit_code == 3
    families = parse(prom.read_text())
    assert value(families, "dialer_exit_status") == 3
    assert value(families, "dialer_run_status", status="stopped") == 1
    assert value(families, "dialer_last_success_timestamp_seconds") == 0  # never succeeded


def test_a_metrics_file_that_cannot_be_written_is_refused_before_anything_happens(tmp_path):
    db = tmp_path / "d.db"
    for where, why in (
        (tmp_path / "missing" / "dialer.prom", "cannot write there"),
        (tmp_path, "is a folder"),
    ):
        result = invoke("start", ROOT / "leads.sample.csv", "--simulate", "--db", db,
                        "--metrics-file", where)  # fmt: skip
        assert result.exit_code == 2 and why in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert not db.exists()
    resumed = invoke("resume", 1, "--db", db, "--metrics-file", tmp_path / "no" / "x.prom")
    assert resumed.exit_code == 2 and "--metrics-file" in resumed.stderr


def test_labels_are_escaped_and_the_last_success_is_the_campaigns(store):
    campaign = 'night "shift" \\ 2'
    first = store.create_run(
        source="crm", source_key="crm", leads=make_leads(1), target=DEFAULT_ACCOUNT_SID,
        base_url=None, from_number=FROM, concurrency=1, settings={}, now=T0, campaign=campaign,
    )  # fmt: skip
    store.set_status(first, RunStatus.COMPLETED, T0 + 100)
    second = store.create_run(
        source="crm", source_key="crm", leads=make_leads(1), target=DEFAULT_ACCOUNT_SID,
        base_url=None, from_number=FROM, concurrency=1, settings={}, now=T0, campaign=campaign,
    )  # fmt: skip
    store.set_status(second, RunStatus.FAILED, T0 + 200)
    families = parse(metrics.text(store, second, T0 + 300, exit_status=1))
    [sample] = families["dialer_last_success_timestamp_seconds"]
    assert sample.labels == {"run_id": str(second), "campaign": campaign}
    assert sample.value == T0 + 100


def test_write_back_pending_is_the_outbox_of_the_run(store):
    """Leads that reached a final state while the CRM has not taken them yet."""
    run_id = store.create_run(
        source="crm", source_key="crm", leads=make_leads(3), target=DEFAULT_ACCOUNT_SID,
        base_url=None, from_number=FROM, concurrency=1, now=T0,
        settings={"writeback": {"url": "sqlite:///crm.db", "sql": "UPDATE t SET x = :id"}},
    )  # fmt: skip
    store.conn.execute("UPDATE jobs SET state = 'failed', outcome = 'busy' WHERE id <= 2")
    families = parse(metrics.text(store, run_id, T0, exit_status=None))
    assert value(families, "dialer_writeback_pending") == 2
    store.conn.execute("UPDATE writeback SET state = 'written'")
    assert value(parse(metrics.text(store, run_id, T0)), "dialer_writeback_pending") == 0
