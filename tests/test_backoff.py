"""The back-off details: a 429 back-off that starts over after a create goes through, a 503's
Retry-After honoured, and settings that could never work refused before anything is written."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from dialer_cli.config import load_settings
from dialer_cli.errors import ConfigError
from dialer_cli.models import RunStatus
from dialer_cli.rules import Pacer
from dialer_cli.simulator import Faults, Simulator
from tests.conftest import ROOT, make_leads, new_run, write_config


def retry_delays(h) -> list[float]:
    return [float(e.data["retry_in"]) for e in h.events if e.kind == "create-retry"]


def test_the_429_back_off_starts_over_after_a_create_goes_through(store, sim, harness):
    # One create every 10 s, so that each tick sends at most one.
    h = harness(new_run(store, make_leads(3)), rules={"pacer": Pacer(0.1)})
    h.dialer.rng = random.Random(3)
    sim.faults = Faults(p_429=1.0, retry_after_s=None)  # no Retry-After: our own back-off
    for _ in range(6):
        h.tick()
        h.clock.advance(61.0)
    assert len(retry_delays(h)) == 6
    sim.faults = Faults()
    h.tick()
    assert len(sim.calls()) == 1  # this create went through
    sim.faults = Faults(p_429=1.0, retry_after_s=None)
    h.clock.advance(10.0)
    h.tick()
    # The first step again (a poll interval plus up to two), not the seventh (up to 61 s).
    assert retry_delays(h)[-1] <= 3 * h.dialer.options.poll_interval
    sim.faults = Faults()
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert len(sim.calls()) == 3 and len({c.to for c in sim.calls()}) == 3


def test_a_503_on_create_holds_every_create_for_its_retry_after(store, sim, harness):
    h = harness(new_run(store, make_leads(3), concurrency=3))
    sim.faults = Faults(p_503=1.0, retry_after_s=30)
    h.tick()
    assert len(sim.creates()) == 1  # the other two leads wait with it
    assert store.counts(h.dialer.run_id)["dialing"] == 1  # unknown: reconciled, not resent
    sim.faults = Faults()
    for _ in range(29):
        h.clock.advance(1.0)
        h.tick()
    assert not sim.calls()  # nothing for 30 s
    assert h.run_until_done(step=1.0) == RunStatus.COMPLETED
    assert len(sim.calls()) == 3 and len({c.to for c in sim.calls()}) == 3
    assert min(c.created_at for c in sim.calls()) >= h.events[0].at + 30


# -- settings that can never work ------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["https://", "http://", "https:///2010-04-01", "http://:8080", "http://host:port"]
)
def test_a_base_url_without_a_usable_host_is_refused(tmp_path: Path, url: str):
    config = tmp_path / "c.yaml"
    config.write_text(f"twilio:\n  base_url: '{url}'\n")
    with pytest.raises(ConfigError, match=r"twilio\.base_url: expected an http:// or https://"):
        load_settings(config, {})


def test_reconcile_grace_must_be_above_zero(tmp_path: Path):
    config = tmp_path / "c.yaml"
    config.write_text("dialing:\n  reconcile_grace: 0\n")
    with pytest.raises(ConfigError, match=r"dialing\.reconcile_grace: expected a number > 0"):
        load_settings(config, {})


def start(tmp_path: Path, config: Path) -> subprocess.CompletedProcess[str]:
    leads = tmp_path / "leads.csv"
    leads.write_text("name,phone\nAda,+12125550100\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "DIALER_"))}
    argv = ["start", leads, "--config", config, "--db", tmp_path / "d.db", "--yes"]
    return subprocess.run(
        [sys.executable, "-m", "dialer_cli", *map(str, argv)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("base_url: 'https://'", "twilio.base_url"),
        ("reconcile_grace: 0", "dialing.reconcile_grace"),
    ],
)
def test_start_with_a_setting_that_cannot_work_is_one_line_and_exit_2(tmp_path, line, key):
    with Simulator() as sim:
        config = write_config(tmp_path / "c.yaml", sim)
        section = "twilio:\n" if key.startswith("twilio") else "dialing:\n"
        config.write_text(config.read_text().replace(section, f"{section}  {line}\n", 1))
        text = config.read_text()
        if key == "twilio.base_url":  # the one from write_config comes later and would win
            config.write_text(text.replace(f"  base_url: {sim.url}\n", ""))
        done = start(tmp_path, config)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and key in done.stderr
    assert not (tmp_path / "d.db").exists()
