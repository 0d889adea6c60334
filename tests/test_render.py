"""Views rendered into fixed-width consoles and read as text, from runs the real engine played
against the simulator; and `dialer status` on a real pseudo-terminal."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable

import pytest
from rich.cells import cell_len
from rich.console import Console

from dialer_cli import render, report, runner
from dialer_cli.models import Lead
from dialer_cli.simulator import CallPlan, Simulator
from tests.conftest import ROOT, FakeClock, make_leads, new_run, write_config

FSI, PDI = "\u2068", "\u2069"


def draw(renderable, width: int = 80, **console_args) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, **console_args)
    console.print(renderable)
    return console.file.getvalue()


def panel_text(store, h, width: int = 80, mask: bool = False) -> str:
    view = report.live_data(store, h.dialer.run_id, h.clock.now)
    return draw(render.run_panel(view, mask=mask), width)


def row_of(text: str, needle: str) -> str:
    return next(line for line in text.splitlines() if needle in line)


# -- the live panel ------------------------------------------------------------------------------


def test_panel_shows_counters_and_calls_in_flight_but_no_eta_yet(store, sim, harness):
    h = harness(new_run(store, make_leads(10), concurrency=3))
    h.tick()
    h.clock.advance(4)
    h.tick()  # answered at 2.5 s: the status changes now, so its age starts again
    h.clock.advance(3)
    text = panel_text(store, h)
    for needle in (
        "run 1 · running · test.csv",
        "queued 7",
        "in flight 3",
        "answered 0",
        "0/10 done",
        "in flight (3)",
        "elapsed 7s",
        "ETA measuring",
    ):
        assert needle in text, needle
    assert not re.search(r"ETA \d", text)
    for i in range(3):
        row = row_of(text, f"Lead {i} ")
        assert f"+1212555{100 + i:04d}" in row and re.search(r"in-progress +3s", row)
    assert "Lead 3" not in text


def test_panel_shows_the_eta_once_three_calls_have_ended(store, sim, harness):
    h = harness(new_run(store, make_leads(10), concurrency=3))
    while len(report.recent(store, h.dialer.run_id)) < 3:
        h.tick()
        h.clock.advance(1)
    view = report.live_data(store, h.dialer.run_id, h.clock.now)
    text = draw(render.run_panel(view))
    assert view["eta_s"] and f"ETA {render.duration(view['eta_s'])}" in text
    assert "answered 3" in text and "last ended" in text
    assert row_of(text, "Lead 0 ").split()[-3:-1] == ["answered", "10s"]


@pytest.mark.parametrize("width", [80, 200])
def test_panel_fits_narrow_and_wide_terminals(store, sim, harness, width):
    leads = make_leads(6)
    leads[1] = Lead(3, leads[1].phone, leads[1].e164, {"name": "Bartholomew " * 6})  # too long
    h = harness(new_run(store, leads, concurrency=3))
    h.tick()
    lines = panel_text(store, h, width).splitlines()
    assert {cell_len(line) for line in lines} == {min(width, render.PANEL_WIDTH)}
    assert any("Bartholomew Bartholomew" in line and "…" in line for line in lines)
    assert all(line.startswith(("╭", "│", "╰")) for line in lines)


def test_masked_numbers_keep_country_area_and_last_two_digits(store, sim, harness):
    h = harness(new_run(store, make_leads(3), concurrency=3))
    h.tick()
    text = panel_text(store, h, mask=True)
    assert "+1 212 •••-••00" in text and "+1 212 •••-••02" in text
    assert "555" not in text


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+12125550167", "+1 212 •••-••67"),
        ("+442079460018", "+44 20 •••• ••18"),
        ("+33612345678", "+33 6 •• •• •• 78"),
        ("+999", "+•99"),  # not a number phonenumbers knows: every digit but the last two
        (None, ""),
    ],
)
def test_mask_number(number, masked):
    assert render.mask_number(number) == masked


def test_a_right_to_left_name_stays_in_its_cell(store, sim, harness):
    leads = make_leads(3)
    leads[1] = Lead(3, leads[1].phone, leads[1].e164, {"name": "דנה לוי"})
    h = harness(new_run(store, leads, concurrency=3))
    h.tick()
    text = panel_text(store, h)
    rows = [row_of(text, needle) for needle in ("Lead 0", "דנה", "Lead 2")]
    assert f"{FSI}דנה לוי{PDI}" in rows[1]  # isolated: a bidi terminal keeps the row's order
    starts = {cell_len(row[: row.index("+1212555")]) for row in rows}
    ends = {cell_len(row[: row.index("queued")]) for row in rows}
    assert len(starts) == 1 and len(ends) == 1  # the number and status columns line up
    assert {cell_len(row) for row in rows} == {80}


def test_cell_cuts_before_isolating_and_drops_what_could_break_a_row():
    long = render.cell("שלום " * 10, width=12)
    assert long.startswith(FSI) and long.endswith(f"…{PDI}") and cell_len(long) == 12
    assert render.cell("Eve\u202eevil\nline") == "Eveevil line"  # no RLO, no newline
    assert render.cell("Ada") == "Ada" and render.cell(None) == ""


def test_no_color_output_has_no_colours_and_a_readable_bar(store, sim, harness, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    h = harness(new_run(store, make_leads(4), concurrency=1))
    h.run_until_done(step=1.0)
    h2 = harness(new_run(store, make_leads(4, start=200), concurrency=2))
    for _ in range(20):
        h2.tick()
        h2.clock.advance(1)
    view = report.live_data(store, h2.dialer.run_id, h2.clock.now)
    console = Console(file=io.StringIO(), width=80, force_terminal=True)
    console.print(render.run_panel(view))
    text = console.file.getvalue()
    assert not re.search(r"\x1b\[(3\d|9\d|38;)", text)  # bold is fine, colour is not
    assert "━" in text and "─" in text and "2/4 done 50%" in text


def test_duration():
    assert [render.duration(s) for s in (None, 4.4, 59.6, 64, 3599, 4080)] == [
        "",
        "4s",
        "1m 00s",
        "1m 04s",
        "59m 59s",
        "1h 08m",
    ]


# -- one-shot tables -----------------------------------------------------------------------------


def test_runs_table_shows_progress_and_answer_rate(store, sim, harness):
    h = harness(new_run(store, make_leads(4), concurrency=2))
    h.run_until_done(step=1.0)
    new_run(store, make_leads(2, start=300))  # not started: no rate yet
    snaps = [runner.snapshot(store, r.id, h.clock.now) for r in store.runs()]
    snaps[1]["stats"] = report.stats(store, 1, h.clock.now)
    snaps[0]["source"] = "/a/very/long/path/to/the/leads/of/the/night/shift.csv"
    text = draw(render.runs_table(snaps))
    assert "/a/very/" in text and "…" in text and max(map(cell_len, text.splitlines())) <= 80
    assert re.search(r"1 +test\.csv +2026-\d\d-\d\d \d\d:\d\d +completed +4/4 100% +100%", text)
    assert re.search(r"2 +/a/very/.*… +2026-\S+ \S+ +stopped +0/2 0% *$", text, re.M)


def test_calls_table_pages_and_masks(store, sim, harness):
    h = harness(new_run(store, make_leads(5), concurrency=5))
    h.run_until_done(step=1.0)
    rows, total = store.calls_page(None, 1, 2)
    page = {"items": [runner.call_item(r) for r in rows], "total": total, "page": 1, "page_size": 2}
    wide = draw(render.calls_table(page), 200)
    assert "5 calls · page 1 of 3 · next: --page 2" in wide
    assert rows[0]["call_sid"] in wide and "answered" in wide and "10s" in wide
    narrow = draw(render.calls_table(page, mask=True), 80)
    assert "+1 212 •••-••04" in narrow and "+12125550104" not in narrow
    assert f"CA…{rows[0]['call_sid'][-4:]}" in narrow and "…" not in narrow.replace("CA…", "")
    assert max(cell_len(line) for line in narrow.splitlines()) <= 80


def test_status_table_shows_the_statistics(store, sim, harness):
    h = harness(new_run(store, make_leads(3), concurrency=3))
    h.run_until_done(step=1.0)
    snap = runner.snapshot(store, 1, h.clock.now)
    snap["stats"] = report.stats(store, 1, h.clock.now)
    text = draw(render.status_table(snap), 100)
    assert re.search(r"answer rate +│ 100%", text) and re.search(r"mean talk s +│ 10", text)
    # the simulator has not priced the three answered calls yet: Twilio takes a while
    assert re.search(r"cost +│ 0 \(3 calls without a price yet\)", text)


# -- a real terminal -----------------------------------------------------------------------------


def read_pty(fd: int, until: Callable[[str], bool], timeout: float, seen: str = "") -> str:
    """Read what the program draws until `until(all of it)` or the terminal closes."""
    deadline = time.monotonic() + timeout
    data = seen.encode()
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the program exited and closed its side
                chunk = b""
            if not chunk:
                return data.decode(errors="replace")
            data += chunk
        if until(data.decode(errors="replace")):
            return data.decode(errors="replace")
    raise AssertionError(f"timed out; the terminal showed:\n{data.decode(errors='replace')}")


def spawn(*args: object, **kwargs) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWILIO_", "DIALER_")) and k not in ("COLUMNS", "LINES")
    }
    env["TERM"] = "xterm-256color"
    return subprocess.Popen(
        [sys.executable, "-m", "dialer_cli", *map(str, args)], env=env, cwd=ROOT, **kwargs
    )


def test_status_on_a_terminal_redraws_and_ends_with_the_run(tmp_path):
    """The simulator's clock stands still, so the three calls ring until the test moves it."""
    clock = FakeClock(time.time())
    plan = lambda to, nth: CallPlan("completed", queue_s=0.0, ring_s=1.0, talk_s=30.0)  # noqa: E731
    csv = tmp_path / "l.csv"
    csv.write_text("name,phone\nAda,+12125550100\nBob,+12125550101\nCy,+12125550102\n")
    db = tmp_path / "d.db"
    with Simulator(clock=clock, plan=plan) as sim:
        cfg = write_config(tmp_path / "c.yaml", sim, concurrency=3, poll_interval=0.05)
        pipes = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        start = spawn("start", csv, "--config", cfg, "--db", db, "--yes", **pipes)
        master, slave = os.openpty()
        status = None
        try:
            deadline = time.monotonic() + 30
            while len(sim.calls()) < 3:  # the run is going: all three calls are ringing
                assert time.monotonic() < deadline and start.poll() is None, "run did not start"
                time.sleep(0.02)
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
            status = spawn("status", "1", "--db", db, stdin=slave, stdout=slave, stderr=slave)
            os.close(slave)
            shown = read_pty(master, lambda text: text.count("╭") >= 2, timeout=30)
            assert "in flight (3)" in shown and "Ada" in shown  # drawn twice, run still going
            clock.advance(100)  # every call ends: the run completes
            shown = read_pty(master, lambda _: False, timeout=30, seen=shown)
            assert status.wait(10) == 0
            assert start.wait(30) == 0, start.communicate()[1]
        finally:
            for proc in (start, status):
                if proc is not None and proc.poll() is None:
                    proc.kill()
            os.close(master)
    assert "run 1 completed: 3 leads: 3 answered" in shown
