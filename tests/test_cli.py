"""The commands end to end: in-process through CliRunner, and as real processes where the
promise is about processes (stop from another process, two drivers on one database)."""

from __future__ import annotations

import json
import os
import pty
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dialer_cli.cli import app
from dialer_cli.simulator import CallPlan, Simulator
from tests.conftest import ROOT, wait_for, write_config

runner = CliRunner()


def dump(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def leads_csv(path: Path, n: int, start: int = 100) -> Path:
    rows = [f"Lead {i},+1212555{start + i:04d}" for i in range(n)]
    path.write_text("name,phone\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


# -- in-process -------------------------------------------------------------------------------


def test_sample_campaign_on_the_simulator(tmp_path):
    db = tmp_path / "d.db"
    result = invoke(
        "start", ROOT / "leads.sample.csv", "--simulate", "--sim-speed", "500", "--db", db
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "run 1"
    assert "completed" in result.stdout.splitlines()[-1]
    status = json.loads(invoke("status", "1", "--json", "--db", db).stdout)
    assert status["status"] == "completed" and status["queued"] == 0
    assert status["in_progress"] == 0 and status["skipped"] >= 1
    assert status["completed"] + status["failed"] == status["total_leads"]
    for key in ("run_id", "concurrency", "outcomes", "source", "created_at", "finished_at"):
        assert key in status
    assert status["finished_at"].endswith("Z")


def test_start_json_emits_event_lines_ending_with_the_status(tmp_path):
    db = tmp_path / "d.db"
    csv = leads_csv(tmp_path / "l.csv", 4)
    result = invoke("start", csv, "--simulate", "--sim-speed", "500", "--json", "--db", db)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["event"] == "run-started"
    assert sum(e["event"] == "call-placed" for e in lines) == 4
    assert lines[-1]["event"] == "status" and lines[-1]["status"] == "completed"


def test_piped_progress_has_no_escape_codes(tmp_path):
    csv = leads_csv(tmp_path / "l.csv", 3)
    result = invoke("start", csv, "--simulate", "--sim-speed", "500", "--db", tmp_path / "d.db")
    assert "\x1b" not in result.output
    assert any(" call placed to " in line for line in result.stderr.splitlines())


def test_same_source_twice_needs_new_or_names_the_run_to_resume(tmp_path, live_sim):
    db = tmp_path / "d.db"
    cfg = write_config(tmp_path / "c.yaml", live_sim, poll_interval=0.02)
    csv = leads_csv(tmp_path / "l.csv", 2)
    assert invoke("start", csv, "--config", cfg, "--db", db).exit_code == 0
    again = invoke("start", csv, "--config", cfg, "--db", db)
    assert again.exit_code == 2 and "--new" in again.stderr and "run 1" in again.stderr
    fresh = invoke("start", csv, "--config", cfg, "--new", "--db", db)
    assert fresh.exit_code == 0 and fresh.stdout.startswith("run 2")
    invoke("stop", "2", "--db", db)  # completed already: stop says so
    live_sim.faults.p_429 = 1.0  # Twilio refuses every create: the third run is left unfinished
    seen = len(live_sim.creates())
    third = dialer("start", csv, "--config", cfg, "--new", "--db", db)
    wait_for(lambda: len(live_sim.creates()) > seen, what="a refused create")
    third.terminate()
    assert third.wait(30) == 3
    busy = invoke("start", csv, "--config", cfg, "--db", db)
    assert busy.exit_code == 4 and "dialer resume 3" in busy.stderr


def test_the_simulator_demo_can_run_again(tmp_path):
    db = tmp_path / "d.db"
    csv = leads_csv(tmp_path / "l.csv", 2)
    assert invoke("start", csv, "--simulate", "--sim-speed", "500", "--db", db).exit_code == 0
    again = invoke("start", csv, "--simulate", "--sim-speed", "500", "--db", db)
    assert again.exit_code == 0 and again.stdout.startswith("run 2")


BAD_CSV = {
    "not-utf8.csv": (b"name,phone\n\xff\xfe,+12125550100\n", "line 2"),
    "no-phone.csv": (b"name,number\nA,+12125550100\n", "phone"),
    "quote.csv": (b'name,phone\n"A,+12125550100\nB,+12125550101\n', "line 2"),
    "empty.csv": (b"", "line 1"),
    "extra.csv": (b"name,phone\nA,+12125550100,x\n", "line 2"),
}


@pytest.mark.parametrize("name", sorted(BAD_CSV))
def test_bad_csv_is_one_line_exit_2_and_the_database_is_unchanged(tmp_path, name):
    db = tmp_path / "d.db"
    good = leads_csv(tmp_path / "good.csv", 2)
    assert invoke("start", good, "--simulate", "--sim-speed", "500", "--db", db).exit_code == 0
    before = dump(db)
    content, where = BAD_CSV[name]
    bad = tmp_path / name
    bad.write_bytes(content)
    result = invoke("start", bad, "--simulate", "--db", db)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and where in lines[0]
    assert "Traceback" not in result.output
    assert dump(db) == before


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("dialing:\n  concurency: 3\n", "dialing.concurency"),
        ("dialing:\n  concurrency: many\n", "dialing.concurrency"),
        ("dialing: [\n", "line"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, yaml_text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    db = tmp_path / "d.db"
    result = invoke("start", leads_csv(tmp_path / "l.csv", 1), "--config", cfg, "--db", db)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "c.yaml" in lines[0]
    assert dump(db) == []


def test_missing_credentials_exit_2_without_touching_the_database(tmp_path):
    db = tmp_path / "d.db"
    result = invoke("start", leads_csv(tmp_path / "l.csv", 1), "--db", db)
    assert result.exit_code == 2 and "TWILIO_AUTH_TOKEN" in result.stderr
    assert dump(db) == []


def test_wrong_token_is_a_runtime_failure_and_never_printed(tmp_path, monkeypatch):
    with Simulator() as sim:
        cfg = write_config(tmp_path / "c.yaml", sim)
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", "s3cret-wrong-token")
        db = tmp_path / "d.db"
        result = invoke("start", leads_csv(tmp_path / "l.csv", 2), "--config", cfg, "--db", db)
    assert result.exit_code == 1, result.output
    assert "credentials" in result.stderr and "s3cret" not in result.output
    status = json.loads(invoke("status", "1", "--json", "--db", db).stdout)
    assert status["status"] == "failed" and status["queued"] == 2


def test_commands_that_read_need_no_config_or_credentials(tmp_path):
    db = tmp_path / "d.db"
    invoke(
        "start", leads_csv(tmp_path / "l.csv", 2), "--simulate", "--sim-speed", "500", "--db", db
    )
    for args in (["status", "1", "--json"], ["runs", "--json"], ["calls", "--json"]):
        result = invoke(*args, "--db", db)
        assert result.exit_code == 0, result.output
        json.loads(result.stdout)
    page = json.loads(
        invoke("calls", "--run", "1", "--page-size", "1", "--json", "--db", db).stdout
    )
    assert page["total"] == 2 and page["page_size"] == 1 and len(page["items"]) == 1
    item = page["items"][0]
    for key in (
        "call_sid",
        "run_id",
        "lead_name",
        "to",
        "twilio_status",
        "outcome",
        "started_at",
        "ended_at",
        "duration_s",
        "error_code",
        "error_message",
    ):
        assert key in item


def test_unknown_run_is_bad_input(tmp_path):
    db = tmp_path / "d.db"
    invoke(
        "start", leads_csv(tmp_path / "l.csv", 1), "--simulate", "--sim-speed", "500", "--db", db
    )
    result = invoke("status", "99", "--db", db)
    assert result.exit_code == 2 and "no run 99" in result.stderr


# -- real processes ---------------------------------------------------------------------------


def dialer(*args: object, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "DIALER_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "dialer_cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kwargs,
    )


def status_of(db: Path) -> dict:
    """`dialer status --json` from another process, as an operator would run it."""
    done = subprocess.run(
        [sys.executable, "-m", "dialer_cli", "status", "1", "--json", "--db", str(db)],
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout) if done.returncode == 0 else {}


@pytest.fixture
def live_sim():
    plan = lambda to, nth: CallPlan("completed", queue_s=0.05, ring_s=0.1, talk_s=0.4)  # noqa: E731
    with Simulator(plan=plan) as sim:
        yield sim


def test_stop_from_another_process_then_resume_dials_only_what_is_left(tmp_path, live_sim):
    cfg = write_config(tmp_path / "c.yaml", live_sim, concurrency=3, poll_interval=0.02)
    db = tmp_path / "d.db"
    start = dialer("start", leads_csv(tmp_path / "l.csv", 30), "--config", cfg, "--db", db, "--yes")
    wait_for(lambda: len(live_sim.calls()) >= 6, what="calls to start")
    stopper = dialer("stop", "1", "--db", db)
    assert stopper.wait(30) == 0, stopper.stderr.read()
    created_at_stop = len(live_sim.calls())
    assert start.wait(30) == 3, start.stderr.read()
    assert len(live_sim.calls()) - created_at_stop <= 3
    status = json.loads(dialer("status", "1", "--json", "--db", db).communicate()[0])
    assert status["status"] == "stopped" and status["in_progress"] == 0 and status["queued"] > 0
    resume = dialer("resume", "1", "--config", cfg, "--db", db)
    assert resume.wait(60) == 0, resume.stderr.read()
    per_number = Counter(c.to for c in live_sim.calls())
    assert len(per_number) == 30 and set(per_number.values()) == {1}
    assert live_sim.max_live() <= 3


def test_two_processes_on_one_database_never_exceed_n_together(tmp_path, live_sim):
    cfg = write_config(tmp_path / "c.yaml", live_sim, concurrency=3, poll_interval=0.02)
    db = tmp_path / "d.db"
    a = dialer("start", leads_csv(tmp_path / "a.csv", 15), "--config", cfg, "--db", db, "--yes")
    b = dialer(
        "start", leads_csv(tmp_path / "b.csv", 15, start=150), "--config", cfg, "--db", db, "--yes"
    )
    for proc in (a, b):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert live_sim.max_live() <= 3
    per_number = Counter(c.to for c in live_sim.calls())
    assert len(per_number) == 30 and set(per_number.values()) == {1}


def test_a_second_driver_of_the_same_run_exits_4_at_once(tmp_path, live_sim):
    cfg = write_config(tmp_path / "c.yaml", live_sim, concurrency=2, poll_interval=0.02)
    db = tmp_path / "d.db"
    first = dialer("start", leads_csv(tmp_path / "l.csv", 20), "--config", cfg, "--db", db)
    wait_for(lambda: len(live_sim.calls()) >= 2, what="first driver to dial")
    second = dialer("resume", "1", "--config", cfg, "--db", db)
    assert second.wait(20) == 4
    assert "being driven by another process" in second.stderr.read()
    assert first.wait(90) == 0
    assert set(Counter(c.to for c in live_sim.calls()).values()) == {1}


def test_sigterm_drains_and_exits_3(tmp_path, live_sim):
    cfg = write_config(tmp_path / "c.yaml", live_sim, concurrency=3, poll_interval=0.02)
    db = tmp_path / "d.db"
    proc = dialer("start", leads_csv(tmp_path / "l.csv", 30), "--config", cfg, "--db", db)
    wait_for(lambda: len(live_sim.calls()) >= 3, what="calls to start")
    proc.terminate()
    assert proc.wait(30) == 3
    status = json.loads(dialer("status", "1", "--json", "--db", db).communicate()[0])
    assert status["status"] == "stopped" and status["in_progress"] == 0


def test_stop_cancel_active_ends_the_calls_of_a_killed_driver(tmp_path):
    plan = lambda to, nth: CallPlan("completed", queue_s=0.05, ring_s=0.1, talk_s=60)  # noqa: E731
    with Simulator(plan=plan) as sim:
        cfg = write_config(tmp_path / "c.yaml", sim, concurrency=3, poll_interval=0.02)
        db = tmp_path / "d.db"
        proc = dialer("start", leads_csv(tmp_path / "l.csv", 10), "--config", cfg, "--db", db)
        wait_for(lambda: len(sim.calls()) >= 3, what="three live calls")
        wait_for(lambda: status_of(db).get("calling") == 3, what="SIDs saved")
        proc.kill()
        proc.wait()
        stopper = dialer("stop", "1", "--cancel-active", "--config", cfg, "--db", db)
        assert stopper.wait(30) == 0, stopper.stderr.read()
        ends = [r for r in sim.requests() if r.method == "POST" and "/Calls/" in r.path]
        assert len(ends) == 3
        assert all(c.ended_at(sim.speed) < c.created_at + 30 for c in sim.calls())
        status = status_of(db)
        assert status["status"] == "stopped" and status["in_progress"] == 0
        assert status["queued"] == 7 and len(sim.calls()) == 3


def test_a_second_ctrl_c_exits_130_and_leaves_the_run_resumable(tmp_path):
    plan = lambda to, nth: CallPlan("completed", queue_s=0.05, ring_s=0.1, talk_s=60)  # noqa: E731
    with Simulator(plan=plan) as sim:
        cfg = write_config(tmp_path / "c.yaml", sim, concurrency=2, poll_interval=0.02)
        db = tmp_path / "d.db"
        proc = dialer("start", leads_csv(tmp_path / "l.csv", 5), "--config", cfg, "--db", db)
        wait_for(lambda: status_of(db).get("calling") == 2, what="two live calls")
        proc.send_signal(signal.SIGINT)
        while (line := proc.stderr.readline()) and "stopping" not in line:
            pass  # the first Ctrl-C is acknowledged on stderr before the second is sent
        assert "Ctrl-C again" in line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 130
        status = status_of(db)
        assert status["status"] == "stopped" and status["queued"] == 3
        assert len(sim.calls()) == 2


def on_a_terminal(args: list[str], answer: bytes) -> tuple[bytes, int]:
    """Run dialer with stdin, stdout and stderr on a pty; answer its [y/N] prompt."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        os.execv(sys.executable, [sys.executable, "-m", "dialer_cli", *args])
    screen = b""
    deadline = time.monotonic() + 20
    while b"[y/N]" not in screen and time.monotonic() < deadline:
        screen += os.read(fd, 4096)
    os.write(fd, answer)
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        screen += chunk
    _, code = os.waitpid(pid, 0)
    return screen, os.waitstatus_to_exitcode(code)


def test_confirmation_on_a_terminal_declined_dials_nobody_and_writes_nothing(tmp_path, live_sim):
    cfg = write_config(tmp_path / "c.yaml", live_sim)
    db = tmp_path / "d.db"
    csv = leads_csv(tmp_path / "l.csv", 3)
    screen, code = on_a_terminal(["start", str(csv), "--config", str(cfg), "--db", str(db)], b"n\n")
    assert b"Each call says: <Response><Say>Hello from the tests." in screen
    assert b"Dial 3 leads from +15005550006 through account AC0000" in screen
    assert code == 0  # the user chose; nothing failed
    after = screen.split(b"[y/N]", 1)[1].decode().split()
    assert " ".join(after) == ": n not confirmed: nothing was saved and nobody was called"
    assert b"run 1" not in screen  # no run id for a run that does not exist
    assert not live_sim.creates()
    assert not db.exists()  # the database this start created is gone again


def test_declined_on_an_existing_database_leaves_it_as_it_was(tmp_path, live_sim):
    cfg = write_config(tmp_path / "c.yaml", live_sim, poll_interval=0.02)
    db = tmp_path / "d.db"
    assert (
        invoke("start", leads_csv(tmp_path / "a.csv", 1), "--config", cfg, "--db", db).exit_code
        == 0
    )
    before, calls = dump(db), len(live_sim.creates())
    csv = leads_csv(tmp_path / "b.csv", 2, start=200)
    screen, code = on_a_terminal(["start", str(csv), "--config", str(cfg), "--db", str(db)], b"n\n")
    assert code == 0 and b"nothing was saved" in screen
    assert dump(db) == before and len(live_sim.creates()) == calls


def test_resume_refuses_another_accounts_credentials(tmp_path, live_sim, monkeypatch):
    cfg = write_config(tmp_path / "c.yaml", live_sim, poll_interval=0.02)
    db = tmp_path / "d.db"
    live_sim.faults.p_429 = 1.0
    seen = len(live_sim.creates())
    proc = dialer("start", leads_csv(tmp_path / "l.csv", 2), "--config", cfg, "--db", db)
    wait_for(lambda: len(live_sim.creates()) > seen, what="a refused create")
    proc.terminate()
    assert proc.wait(30) == 3
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "1" * 32)
    result = invoke("resume", "1", "--config", cfg, "--db", db)
    assert result.exit_code == 2 and "dials through account" in result.stderr
