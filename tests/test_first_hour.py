"""Issue 11, the first hour of a new user: every message true, every failure one line with its
documented exit code, nothing half-written. In-process through CliRunner where the promise is about
a command's output, as real processes where it is about pipes, terminals or file systems."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dialer_cli.cli import app
from dialer_cli.simulator import CallPlan, Simulator
from tests.conftest import ROOT, FakeClock, fixed_plan, write_config

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def dump(db: Path) -> list[str]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def leads_csv(path: Path, n: int, start: int = 100) -> Path:
    rows = [f"Lead {i},+1212555{start + i:04d}" for i in range(n)]
    path.write_text("name,phone\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def simulated_run(tmp_path: Path, n: int = 3, db: Path | None = None) -> Path:
    db = db or tmp_path / "d.db"
    csv = leads_csv(tmp_path / f"run{len(dump(db))}.csv", n)
    result = invoke("start", csv, "--simulate", "--sim-speed", "500", "--db", db, "--new")
    assert result.exit_code == 0, result.output
    return db


def one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def dialer(*args: object, env_extra: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "DIALER_"))}
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")} | (env_extra or {})
    return subprocess.Popen(
        [sys.executable, "-m", "dialer_cli", *map(str, args)], env=env, cwd=ROOT, **kwargs
    )


# -- 1. no message configured ---------------------------------------------------------------------


def without_message(cfg: Path) -> Path:
    text = re.sub(r"call:\n  twiml: .*\n", "", cfg.read_text())
    cfg.write_text(text)
    return cfg


def test_a_real_run_without_twiml_or_url_is_a_config_error_before_anything(tmp_path):
    with Simulator() as sim:
        cfg = without_message(write_config(tmp_path / "c.yaml", sim))
        db = tmp_path / "d.db"
        csv = leads_csv(tmp_path / "l.csv", 2)
        for extra in ([], ["--dry-run"]):
            result = invoke("start", csv, "--config", cfg, "--db", db, "--yes", *extra)
            assert result.exit_code == 2
            line = one_line(result)
            assert "call.twiml" in line and "call.url" in line and str(cfg) in line
        assert not db.exists() and sim.creates() == []
    shown = invoke("config", "show", "--config", cfg).stdout
    assert "call.twiml = (not set)  [default]" in shown


def test_the_simulator_keeps_its_built_in_message(tmp_path):
    with Simulator() as sim:
        cfg = without_message(write_config(tmp_path / "c.yaml", sim))
    result = invoke("start", leads_csv(tmp_path / "l.csv", 1), "--simulate", "--sim-speed", "500",
                    "--config", cfg, "--db", tmp_path / "d.db")  # fmt: skip
    assert result.exit_code == 0, result.output


# -- 2, 3. --log-file -----------------------------------------------------------------------------


def test_a_log_file_that_cannot_be_written_is_one_line_and_no_run(tmp_path):
    db = tmp_path / "d.db"
    csv = leads_csv(tmp_path / "l.csv", 2)
    bad = tmp_path / "no" / "such" / "x.log"
    result = invoke("start", csv, "--simulate", "--db", db, "--log-file", bad)
    assert result.exit_code == 2
    assert (
        one_line(result)
        == f"error: --log-file {bad}: cannot write there (No such file or directory)"
    )
    assert dump(db) == []
    again = invoke("start", csv, "--simulate", "--sim-speed", "500", "--db", db)
    assert again.exit_code == 0, again.output  # not 4: no unfinished run was left behind


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("l.csv", 'name,phone\n"A,+12125550100\n', "l.csv: line 2"),
        ("c.yaml", "dialing: [\n", "invalid YAML"),
    ],
)
def test_the_log_file_gets_even_the_earliest_errors(tmp_path, name, content, needle):
    csv = leads_csv(tmp_path / "l.csv", 1)
    (tmp_path / name).write_text(content)
    config = ["--config", tmp_path / "c.yaml"] if name == "c.yaml" else []
    log = tmp_path / "cron.log"
    result = invoke(
        "start", csv, "--simulate", "--db", tmp_path / "d.db", "--log-file", log, *config
    )
    assert result.exit_code == 2
    logged = log.read_text().splitlines()
    assert len(logged) == 1 and needle in logged[0]
    assert logged[0].endswith(one_line(result))  # the same line, with a timestamp in front


# -- 5. a closed pipe -----------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["report", "1"], ["runs", "--json"], ["calls"]])
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, args):
    db = simulated_run(tmp_path)
    proc = dialer(*args, "--db", db, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head -c 0`: the reader is gone before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141  # 128 + SIGPIPE, as `cat` and `git` report under pipefail
    assert err == ""


# -- 6. report --output ---------------------------------------------------------------------------


def test_report_to_a_folder_that_does_not_exist_is_one_line(tmp_path):
    db = simulated_run(tmp_path)
    target = tmp_path / "no" / "x.csv"
    result = invoke("report", "1", "--output", target, "--db", db)
    assert result.exit_code == 2
    assert (
        one_line(result)
        == f"error: --output {target}: cannot write there (No such file or directory)"
    )


# -- 8. a database in a read-only folder ----------------------------------------------------------


def read_only(folder: Path) -> list[str]:
    """A command prefix that runs with `folder` read-only, honestly: tests run as root, whom file
    modes do not stop, so root gets a read-only bind mount in a private mount namespace (the
    folder is then on a read-only file system); anyone else gets the folder's write bit removed."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    helper = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    prefix = ["unshare", "-m", "sh", "-c", helper, str(folder)]
    if shutil.which("unshare") is None or subprocess.run([*prefix, "true"]).returncode != 0:
        pytest.skip("root, and no mount namespace to make a folder read-only in")
    return prefix


def run_read_only(prefix: list[str], *args: object) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "DIALER_"))}
    command = [*prefix, sys.executable, "-m", "dialer_cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def test_views_work_on_a_database_they_cannot_write_and_writers_say_why(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "d.db"
    csv = leads_csv(tmp_path / "l.csv", 3)
    start = dialer("start", csv, "--simulate", "--sim-speed", "500", "--db", db, "-q")
    assert start.wait(60) == 0
    wal = {db.with_name("d.db-wal"), db.with_name("d.db-shm")}
    assert not wal & set(folder.iterdir())  # the last writer checkpointed: no -wal, no -shm
    before = db.read_bytes()
    prefix = read_only(folder)
    try:
        for args in (["status", "1", "--json"], ["runs", "--json"], ["calls", "--json"]):
            done = run_read_only(prefix, *args, "--db", db)
            assert done.returncode == 0, done.stderr
            json.loads(done.stdout)
        report = run_read_only(prefix, "report", "1", "--db", db)
        assert report.returncode == 0 and len(report.stdout.splitlines()) == 4
        reason = "is on a read-only file system" if prefix else "no write permission on its folder"
        for args in (["dnc", "add", "+12125550100"], ["stop", "1"]):
            done = run_read_only(prefix, *args, "--db", db)
            assert done.returncode == 1
            assert done.stderr == f"error: database {db} cannot be written: {folder} {reason}\n"
        doctor = run_read_only(prefix, "doctor", "--simulate", "--db", db)
        assert f"FAIL database {db} cannot be written: {folder} {reason}" in doctor.stdout
    finally:
        folder.chmod(0o755)
    assert db.read_bytes() == before and not wal & set(folder.iterdir())


# -- 9. "failed" means one thing ------------------------------------------------------------------


def test_status_names_the_not_answered_counter_and_shows_its_outcomes(tmp_path):
    db = tmp_path / "d.db"
    csv = tmp_path / "l.csv"
    csv.write_text("name,phone\n" + "\n".join(f"L{i},+1212555{i:04d}" for i in range(100, 112)))
    assert (
        invoke(
            "start", csv, "--simulate", "--sim-speed", "500", "--sim-seed", "3", "--db", db
        ).exit_code
        == 0
    )
    snap = json.loads(invoke("status", "1", "--json", "--db", db).stdout)
    assert snap["failed"] > 0 and snap["outcomes"]["failed"] == 0  # the seed's fields, kept
    text = invoke("status", "1", "--once", "--db", db).stdout
    assert not re.search(r"│ failed +│", text)  # never "failed" for the not-answered counter
    parts = [
        f"{k.replace('_', '-')} {v}" for k, v in snap["outcomes"].items() if v and k != "answered"
    ]
    assert re.search(rf"│ not answered +│ {snap['failed']} \({', '.join(parts)}\)", text)
    assert re.search(rf"│ answered +│ {snap['completed']} ", text)


# -- 12. Ctrl-C in the live view ------------------------------------------------------------------


def read_until(fd: int, done, timeout: float = 30.0, seen: str = "") -> str:
    deadline = time.monotonic() + timeout
    data = seen
    while not done(data):
        assert time.monotonic() < deadline, f"timed out; the terminal showed:\n{data}"
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the program exited
                return data
            if not chunk:
                return data
            data += chunk.decode(errors="replace")
    return data


def test_ctrl_c_in_the_live_view_says_stopping_inside_the_panel_at_once(tmp_path):
    """The simulator's clock stands still, so both calls ring until the test moves it."""
    clock = FakeClock(time.time())
    plan = lambda to, nth: CallPlan("completed", queue_s=0.0, ring_s=1.0, talk_s=30.0)  # noqa: E731
    with Simulator(clock=clock, plan=plan) as sim:
        cfg = write_config(tmp_path / "c.yaml", sim, concurrency=2, poll_interval=2.0)
        csv = leads_csv(tmp_path / "l.csv", 4)
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
        env_term = {"TERM": "xterm-256color"}
        proc = dialer("start", csv, "--config", cfg, "--db", tmp_path / "d.db", "--yes",
                      stdin=slave, stdout=slave, stderr=slave, env_extra=env_term)  # fmt: skip
        os.close(slave)
        try:
            shown = read_until(master, lambda t: "in flight (2)" in t)
            proc.send_signal(signal.SIGINT)
            shown = read_until(master, lambda t: "stopping: no new calls" in t, seen=shown)
            clock.advance(100)  # the calls in flight end; the run stops with two leads left
            shown = read_until(master, lambda t: False, seen=shown)
            assert proc.wait(30) == 3
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
    after = shown[shown.index("stopping: no new calls") :]
    before = shown[: shown.index("stopping: no new calls")]
    titles = re.findall(r"run 1 · (\w+) ·", before)
    assert titles[-1] == "stopping"  # the frame that shows the notice already says stopping
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown).splitlines()
    for line in lines:
        if "stopping: no new calls" in line:
            assert line.lstrip().startswith("│"), line  # inside the panel, never a loose line
    assert "run 1 · running" not in after


# -- smaller ---------------------------------------------------------------------------------------


def test_dnc_import_names_the_lines_it_could_not_use(tmp_path):
    numbers = tmp_path / "optout.csv"
    numbers.write_text("phone\n+12125550101\nnot a number\n(415) 555-0142\n")
    result = invoke("dnc", "import", numbers, "--db", tmp_path / "d.db")
    assert result.exit_code == 0
    assert one_line(result) == (
        f"2 of 2 numbers from {numbers} added to the do-not-call list; "
        "skipped 1 line without a valid number (line 3)"
    )


def test_the_dry_run_shows_a_missing_number_as_such(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("name,phone\nAda,+12125550100\nBob,\n")
    result = invoke("start", csv, "--simulate", "--dry-run", "--db", tmp_path / "d.db")
    assert result.exit_code == 0
    assert "    line 3: no number" in result.stdout.splitlines()
    assert "(None)" not in result.stdout and "2 rows" in result.stdout


def test_one_row_reads_as_one_row(tmp_path):
    csv = leads_csv(tmp_path / "l.csv", 1)
    result = invoke("start", csv, "--simulate", "--dry-run", "-n", "1", "--db", tmp_path / "d.db")
    assert result.stdout.startswith(f"{csv}: 1 row; would dial 1 with at most 1 call in flight")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["calls", "--page", "99"],
            "error: --page 99 is past the last page, 2 (3 calls at 2 a page)",
        ),
        (["calls", "--run", "42"], "error: no run 42 in {db}; `dialer runs` lists them"),
    ],
)
def test_calls_past_the_last_page_or_of_no_run_is_bad_input(tmp_path, args, message):
    db = simulated_run(tmp_path)
    result = invoke(*args, "--page-size", "2", "--db", db)
    assert result.exit_code == 2
    assert one_line(result) == message.format(db=db)


def test_config_show_piped_keeps_each_value_on_its_line_and_names_only_real_sources(tmp_path):
    cfg = tmp_path / "c.yaml"
    twiml = "<Response><Say>" + "A long greeting, said slowly. " * 5 + "</Say></Response>"
    cfg.write_text(f'call:\n  twiml: "{twiml}"\n')
    proc = dialer("config", "show", "--config", cfg, stdout=subprocess.PIPE, text=True)
    shown = proc.communicate(timeout=30)[0].splitlines()
    assert f"call.twiml = {twiml}  [file {cfg}]" in shown
    assert "call.url = (not set)  [default]" in shown  # the file does not set call.url


def test_a_db_path_under_a_file_says_a_file_stands_where_a_folder_is_needed(tmp_path):
    csv = leads_csv(tmp_path / "some.csv", 1)
    result = invoke("start", csv, "--simulate", "--db", csv / "x.db")
    assert result.exit_code == 2
    assert one_line(result) == f"error: --db {csv / 'x.db'}: {csv} is a file, not a folder"


def test_the_failed_run_hint_names_the_run(tmp_path, monkeypatch):
    with Simulator() as sim:
        cfg = write_config(tmp_path / "c.yaml", sim)
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", "wrong")
        result = invoke("start", leads_csv(tmp_path / "l.csv", 1), "--config", cfg, "--yes",
                        "--db", tmp_path / "d.db")  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.strip().endswith("fix it, then `dialer resume 1`")


def test_runs_piped_shows_the_whole_source_under_its_own_name(tmp_path):
    folder = tmp_path / "a-rather-long-folder-name-for-the-nightly-leads"
    folder.mkdir()
    csv = leads_csv(folder / "leads-of-the-night-shift.csv", 1)
    db = tmp_path / "d.db"
    assert invoke("start", csv, "--simulate", "--sim-speed", "500", "--db", db).exit_code == 0
    proc = dialer("runs", "--db", db, stdout=subprocess.PIPE, text=True)
    shown = proc.communicate(timeout=30)[0]
    assert "campaign/source" in shown and str(csv) in shown


def test_start_warns_about_calling_hours_also_when_simulated(tmp_path):
    result = invoke("start", leads_csv(tmp_path / "l.csv", 1), "--simulate", "--sim-speed", "500",
                    "--db", tmp_path / "d.db")  # fmt: skip
    assert "warning: no dialing.calling_hours set" in result.stderr


def test_a_concurrency_above_twilio_defaults_is_warned_about(tmp_path):
    with Simulator(plan=fixed_plan(ring=0.1, talk=0.1)) as sim:  # one short call
        cfg = write_config(tmp_path / "c.yaml", sim, concurrency=10000, poll_interval=0.02)
        result = invoke("start", leads_csv(tmp_path / "l.csv", 1), "--config", cfg,
                        "--db", tmp_path / "d.db")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: concurrency 10000 is above what a Twilio account allows by default" in (
        result.stderr
    )
    quiet = invoke("start", leads_csv(tmp_path / "m.csv", 1, start=300), "--simulate",
                   "--sim-speed", "500", "-n", "3", "--db", tmp_path / "d.db")  # fmt: skip
    assert "warning: concurrency" not in quiet.stderr


def test_an_empty_config_file_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"")
    result = invoke("start", leads_csv(tmp_path / "l.csv", 1), "--simulate", "--config", cfg,
                    "--db", tmp_path / "d.db")  # fmt: skip
    assert result.exit_code == 2
    assert one_line(result) == (
        f"error: {cfg}: the file is empty; add settings (see config.example.yaml) or remove it"
    )
    assert not (tmp_path / "d.db").exists()


def test_from_number_is_checked_as_e164_even_when_simulated(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text('twilio:\n  from_number: "hello"\n')
    result = invoke("start", leads_csv(tmp_path / "l.csv", 1), "--simulate", "--config", cfg,
                    "--db", tmp_path / "d.db")  # fmt: skip
    assert result.exit_code == 2
    assert one_line(result) == (
        f"error: {cfg}: twilio.from_number: expected an E.164 number such as '+14155550100', "
        "got 'hello'"
    )


def test_simulated_statistics_are_in_simulated_time_and_rates_add_up(tmp_path):
    db = tmp_path / "d.db"
    csv = ROOT / "leads.sample.csv"
    assert invoke("start", csv, "--simulate", "--sim-speed", "200", "--db", db).exit_code == 0
    snap = json.loads(invoke("status", "1", "--json", "--db", db).stdout)
    stats = snap["stats"]
    with sqlite3.connect(db) as conn:
        started, finished = conn.execute("SELECT started_at, finished_at FROM runs").fetchone()
    simulated_hours = (finished - started) * 200 / 3600  # our clock ran 200 times slower
    assert stats["calls_per_hour"] == round(stats["calls_placed"] / simulated_hours, 1)
    text = invoke("status", "1", "--once", "--db", db).stdout
    percents = [
        int(p) for p in re.findall(r"│ (?:answer|busy|no answer|failed) rate +│ (\d+)%", text)
    ]
    assert len(percents) == 4 and sum(percents) == 100


def test_a_duplicate_row_shows_the_number_it_duplicates_in_the_report(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("name,phone\nAda,+1 212 555 0100\nAda again,(212) 555-0100\n")
    db = tmp_path / "d.db"
    assert invoke("start", csv, "--simulate", "--sim-speed", "500", "--db", db).exit_code == 0
    rows = json.loads(invoke("report", "1", "--format", "json", "--db", db).stdout)
    assert [(r["e164"], r["outcome"]) for r in rows][1] == ("+12125550100", "skipped:duplicate")
