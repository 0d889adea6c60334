"""Nightly campaigns from cron: database sources, re-runs, deadlines, logs, doctor."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dialer_cli.cli import app
from dialer_cli.simulator import CallPlan, Simulator
from tests.conftest import wait_for, write_config
from tests.test_cli import dialer
from tests.test_sources import postgres  # noqa: F401 - fixture: a real server, or a skip

cli = CliRunner()


def crm(path: Path, n: int, start: int = 100) -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE leads (id INTEGER, name TEXT, phone TEXT, status TEXT)")
        conn.executemany(
            "INSERT INTO leads VALUES (?,?,?,?)",
            [(i, f"Lead {i}", f"+1212555{start + i:04d}", "new") for i in range(n)],
        )
    return path


def campaign_config(tmp_path: Path, sim: Simulator, source: str, **dialing: object) -> Path:
    cfg = write_config(tmp_path / "c.yaml", sim, poll_interval=0.02, **dialing)
    cfg.write_text(
        cfg.read_text()
        + "campaigns:\n  nightly:\n"
        + f"    source: {source}\n"
        + "    query: \"SELECT id, name, phone FROM leads WHERE status = 'new'\"\n"
        + "    dialing: {concurrency: 2}\n"
    )
    return cfg


@pytest.fixture
def quick_sim():
    plan = lambda to, nth: CallPlan("completed", queue_s=0.02, ring_s=0.05, talk_s=0.1)  # noqa: E731
    with Simulator(plan=plan) as sim:
        yield sim


def run_cli(*args: object):
    return cli.invoke(app, [str(a) for a in args])


def test_a_campaign_from_sqlite_runs_with_its_own_settings(tmp_path, quick_sim):
    cfg = campaign_config(tmp_path, quick_sim, f"sqlite:///{crm(tmp_path / 'crm.db', 6)}")
    db = tmp_path / "d.db"
    result = run_cli("start", "--campaign", "nightly", "--config", cfg, "--db", db)
    assert result.exit_code == 0, result.output
    status = json.loads(run_cli("status", "1", "--json", "--db", db).stdout)
    assert status["campaign"] == "nightly" and status["concurrency"] == 2
    assert status["completed"] == 6 and quick_sim.max_live() <= 2


def test_a_campaign_from_postgresql(tmp_path, quick_sim, postgres):  # noqa: F811
    rows = [(str(i), f"P {i}", f"+1212555{100 + i:04d}", "new") for i in range(4)]
    table = postgres.create(["id", "name", "phone", "status"], rows)
    cfg = campaign_config(tmp_path, quick_sim, postgres.url)
    cfg.write_text(cfg.read_text().replace("FROM leads", f'FROM \\"{table}\\"'))
    result = run_cli("start", "--campaign", "nightly", "--config", cfg, "--db", tmp_path / "d.db")
    assert result.exit_code == 0, result.output
    assert len(quick_sim.calls()) == 4


def test_answered_leads_are_not_called_again_by_the_next_run(tmp_path, quick_sim):
    path = crm(tmp_path / "crm.db", 3)
    cfg = campaign_config(tmp_path, quick_sim, f"sqlite:///{path}")
    db = tmp_path / "d.db"
    assert run_cli("start", "--campaign", "nightly", "--config", cfg, "--db", db).exit_code == 0
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO leads VALUES (9, 'New', '+12125550199', 'new')")
    again = run_cli("start", "--campaign", "nightly", "--config", cfg, "--db", db)
    assert again.exit_code == 0, again.output
    status = json.loads(run_cli("status", "2", "--json", "--db", db).stdout)
    assert status["skipped_reasons"] == {"already-called": 3} and status["completed"] == 1
    assert set(Counter(c.to for c in quick_sim.calls()).values()) == {1}


def test_two_overlapping_cron_starts_only_one_dials(tmp_path):
    plan = lambda to, nth: CallPlan("completed", queue_s=0.05, ring_s=0.2, talk_s=30)  # noqa: E731
    with Simulator(plan=plan) as sim:
        cfg = campaign_config(tmp_path, sim, f"sqlite:///{crm(tmp_path / 'crm.db', 5)}")
        db = tmp_path / "d.db"
        first = dialer("start", "--campaign", "nightly", "--config", cfg, "--db", db)
        wait_for(lambda: len(sim.calls()) >= 2, what="the first process to dial")
        began = time.monotonic()
        second = dialer("start", "--campaign", "nightly", "--config", cfg, "--db", db)
        assert second.wait(20) == 4
        assert time.monotonic() - began < 20  # long before the first 30 s call could end
        assert "already being dialled" in second.stderr.read()
        assert len(sim.calls()) == 2
        first.terminate()
        first.wait(5) if first.poll() is not None else None
        try:
            first.wait(10)
        except subprocess.TimeoutExpired:
            first.kill()


def test_a_deadline_leaves_leads_queued_and_the_next_run_finishes_them(tmp_path):
    plan = lambda to, nth: CallPlan("completed", queue_s=0.05, ring_s=0.1, talk_s=0.5)  # noqa: E731
    with Simulator(plan=plan) as sim:
        cfg = campaign_config(tmp_path, sim, f"sqlite:///{crm(tmp_path / 'crm.db', 12)}")
        db, log = tmp_path / "d.db", tmp_path / "night.log"
        first = run_cli(
            "start",
            "--campaign",
            "nightly",
            "--config",
            cfg,
            "--db",
            db,
            "--max-duration",
            "1s",
            "--log-file",
            log,
        )
        assert first.exit_code == 3, first.output
        status = json.loads(run_cli("status", "1", "--json", "--db", db).stdout)
        assert status["status"] == "stopped" and status["queued"] > 0
        assert status["in_progress"] == 0
        second = run_cli(
            "start", "--campaign", "nightly", "--config", cfg, "--db", db, "--log-file", log
        )
        assert second.exit_code == 0, second.output
        assert "resuming its unfinished run 1" in second.stderr
        per_number = Counter(c.to for c in sim.calls())
        assert len(per_number) == 12 and set(per_number.values()) == {1}
        lines = log.read_text().splitlines()
        assert any("deadline" in line for line in lines)
        assert sum(" call placed to " in line for line in lines) == 12
        assert lines[-1].split(" ", 1)[1].startswith("run 1 completed")
        assert all(line[:4].isdigit() and line[10] == "T" for line in lines)


def test_quiet_prints_only_the_summary(tmp_path, quick_sim):
    cfg = campaign_config(tmp_path, quick_sim, f"sqlite:///{crm(tmp_path / 'crm.db', 2)}")
    result = run_cli(
        "start", "--campaign", "nightly", "--config", cfg, "--db", tmp_path / "d.db", "-q"
    )
    assert result.exit_code == 0
    assert result.stderr == "" and result.stdout.startswith("run 1 completed")


def test_bad_database_source_is_one_line_and_masks_the_password(tmp_path):
    result = run_cli(
        "start",
        "postgresql://crm:hunter2@127.0.0.1:1/crm",
        "--query",
        "SELECT 1",
        "--db",
        tmp_path / "d.db",
        "--simulate",
    )
    assert result.exit_code == 2
    assert "hunter2" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "d.db").exists()


def test_doctor_on_a_working_and_a_broken_setup(tmp_path, monkeypatch):
    with Simulator(from_numbers=["+15005550006"]) as sim:
        cfg = campaign_config(tmp_path, sim, f"sqlite:///{crm(tmp_path / 'crm.db', 2)}")
        good = run_cli(
            "doctor", "--campaign", "nightly", "--config", cfg, "--db", tmp_path / "d.db"
        )
        assert good.exit_code == 0, good.output
        assert [line.split()[0] for line in good.stdout.splitlines()] == ["ok"] * 6
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", "wrong-token-123")
        bad = run_cli("doctor", "--campaign", "nightly", "--config", cfg, "--db", tmp_path)
        assert bad.exit_code == 1
        failed = {line.split()[1] for line in bad.stdout.splitlines() if line.startswith("FAIL")}
        assert {"database", "twilio"} <= failed
        assert "wrong-token-123" not in bad.output
