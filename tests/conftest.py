"""Fixtures: an isolated environment, a fake clock shared by the loop and the simulator, the real
simulator on loopback, the real Twilio adapter pointed at it, and a real SQLite store."""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dialer_cli.engine import Dialer, Options, Rules
from dialer_cli.models import CallParams, Lead
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, CallPlan, Simulator
from dialer_cli.store import Store
from dialer_cli.twilio_adapter import TwilioCalls

ROOT = Path(__file__).resolve().parent.parent
FROM = "+15005550006"
T0 = 1_790_000_000.0


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("DIALER_", "TWILIO_")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(key, raising=False)


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition"):
    """Wait on a condition with a deadline (never a bare sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@dataclass
class FakeClock:
    now: float = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fixed_plan(outcome: str = "completed", ring: float = 2.0, talk: float = 10.0) -> Callable:
    """Every call plays out the same way: known call lengths make the schedule checkable."""
    return lambda to, nth: CallPlan(outcome, queue_s=0.5, ring_s=ring, talk_s=talk)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sim(clock: FakeClock) -> Iterator[Simulator]:
    with Simulator(clock=clock, plan=fixed_plan()) as simulator:
        yield simulator


@pytest.fixture
def calls(sim: Simulator, clock: FakeClock) -> TwilioCalls:
    return TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, 5, clock=clock)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(tmp_path / "dialer.db")
    yield s
    s.close()


def make_leads(n: int, start: int = 100) -> list[Lead]:
    """n distinct fictional numbers (NANP 555-01xx and beyond, never real people)."""
    return [
        Lead(
            line=i + 2,
            phone=f"+1212555{start + i:04d}",
            e164=f"+1212555{start + i:04d}",
            fields={"name": f"Lead {i}", "phone": f"+1212555{start + i:04d}"},
        )
        for i in range(n)
    ]


def new_run(
    store: Store, leads: list[Lead], concurrency: int = 3, zones=None, **settings: object
) -> int:
    return store.create_run(
        zones=zones,
        source="test.csv",
        source_key=f"test:{len(store.runs())}",
        leads=leads,
        target=DEFAULT_ACCOUNT_SID,
        base_url=None,
        from_number=FROM,
        concurrency=concurrency,
        settings={"dialing": settings},
        now=T0,
    )


@dataclass
class Harness:
    """A run driven tick by tick on the fake clock."""

    store: Store
    dialer: Dialer
    clock: FakeClock
    events: list = field(default_factory=list)

    def tick(self):
        t = self.dialer.tick()
        self.events.extend(t.events)
        return t

    def run_until_done(self, step: float, max_ticks: int = 10_000) -> str:
        for _ in range(max_ticks):
            t = self.tick()
            if t.done:
                return t.status
            self.clock.advance(step)
        raise AssertionError("run did not finish")


@pytest.fixture
def harness(store: Store, calls: TwilioCalls, clock: FakeClock) -> Callable[..., Harness]:
    def make(
        run_id: int,
        owner: str = "owner-1",
        rules: dict | None = None,
        no_wait: bool = False,
        **options: object,
    ) -> Harness:
        store.take_over(run_id, owner, os.getpid(), "test-host", clock())
        opts = Options(**{"poll_interval": 1.0, "reconcile_grace": 5.0, **options})
        params = CallParams(twiml="<Response><Say>Hi</Say></Response>")
        every = {"params_for": lambda c: params, "pick_from": lambda to: FROM, **(rules or {})}
        dialer = Dialer(
            store, calls, run_id, owner, options=opts, rules=Rules(**every), clock=clock,
            no_wait=no_wait,
        )  # fmt: skip
        return Harness(store, dialer, clock)

    return make


TWIML = "<Response><Say>Hello from the tests.</Say></Response>"


def write_config(path: Path, sim: Simulator, twiml: str = TWIML, **dialing: object) -> Path:
    """A config for real (non-simulated) runs against `sim`; `dialing:` comes last, so a test
    may append keys to it."""
    extra = "".join(f"  {k}: {v}\n" for k, v in dialing.items())
    path.write_text(
        textwrap.dedent(
            f"""\
            twilio:
              account_sid: {DEFAULT_ACCOUNT_SID}
              auth_token: {DEFAULT_AUTH_TOKEN}
              from_number: "{FROM}"
              base_url: {sim.url}
              http_timeout: 5
            call:
              twiml: "{twiml}"
            dialing:
            """
        )
        + (extra or "  concurrency: 3\n")
    )
    return path
