"""What the commands do, without the terminal: import a run, drive it, stop it, describe it.

The CLI resolves flags and picks a view; everything here takes plain values and returns plain
values or events, so the same code serves `start`, `resume`, cron and the tests.
"""

from __future__ import annotations

import dataclasses
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dialer_cli import lease
from dialer_cli.config import Settings, require_credentials
from dialer_cli.engine import Dialer, Options, run
from dialer_cli.errors import BusyError, ConfigError, InputError
from dialer_cli.leads import LeadSource
from dialer_cli.models import OUTCOME_OF_STATUS, CallParams, Claim, Event, Run, RunStatus
from dialer_cli.store import Store

SIMULATED = "simulated"
SIM_FROM_NUMBER = "+15005550006"  # Twilio's test-credentials From number that always passes
DEFAULT_TWIML = "<Response><Say>Hello. This is a test call from dialer.</Say></Response>"


@dataclass(frozen=True)
class Target:
    """Where calls go: a Twilio account, or the built-in simulator."""

    account_sid: str
    auth_token: str
    base_url: str
    http_timeout: float
    from_number: str
    simulated: bool = False
    speed: float = 1.0

    @property
    def key(self) -> str:
        return SIMULATED if self.simulated else self.account_sid


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- targets ------------------------------------------------------------------------------------


def twilio_target(settings: Settings) -> Target:
    require_credentials(settings)
    tw = settings.twilio
    from_number = tw.from_number or (tw.from_numbers[0] if tw.from_numbers else "")
    assert tw.account_sid and tw.auth_token
    return Target(tw.account_sid, tw.auth_token, tw.base_url, tw.http_timeout, from_number)


@contextmanager
def simulator_target(speed: float, seed: int, http_timeout: float) -> Iterator[Target]:
    """Serve the built-in simulator on a free loopback port for the length of a run."""
    from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator

    with Simulator(speed=speed, seed=seed) as sim:
        yield Target(
            DEFAULT_ACCOUNT_SID,
            DEFAULT_AUTH_TOKEN,
            sim.url,
            http_timeout,
            SIM_FROM_NUMBER,
            simulated=True,
            speed=speed,
        )


def target_for_run(run_: Run, settings: Settings) -> Target:
    """A stored run dials through the account it was started with, never another."""
    if run_.simulated:
        raise ConfigError("internal: simulated runs are opened with simulator_target")
    target = twilio_target(settings)
    if target.account_sid != run_.target:
        raise ConfigError(
            f"run {run_.id} dials through account {short_sid(run_.target)}, but the "
            f"configured account is {short_sid(target.account_sid)}; use that account's credentials"
        )
    base_url = run_.base_url or target.base_url
    return dataclasses.replace(target, base_url=base_url, from_number=run_.from_number or "")


def short_sid(sid: str) -> str:
    return f"{sid[:6]}…{sid[-4:]}" if len(sid) > 12 else sid


def open_calls(target: Target) -> Any:
    from dialer_cli.twilio_adapter import TwilioCalls

    return TwilioCalls(target.account_sid, target.auth_token, target.base_url, target.http_timeout)


# -- import -------------------------------------------------------------------------------------


def run_settings(settings: Settings) -> dict[str, object]:
    """The parts of the configuration a run keeps, so a resume dials the same way."""
    return {
        "call": _plain(dataclasses.asdict(settings.call)),
        "dialing": _plain(dataclasses.asdict(settings.dialing)),
        "leads": _plain(dataclasses.asdict(settings.leads)),
    }


def _plain(section: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, str | int | float | bool | list):
            value = str(value)
        out[key] = value
    return out


def check_source(
    store: Store, source: LeadSource, target: Target, new: bool, campaign: str | None = None
) -> None:
    """One unfinished run per source and account: starting it again names the run to resume.

    A completed source is dialled again only with --new, except on the simulator, which
    reaches nobody (so the demo can be run again and again).
    """
    latest = store.latest_run(source_key=source.key, campaign=campaign, target=target.key)
    if latest is None or new:
        return
    if latest.status == RunStatus.COMPLETED:
        if target.simulated:
            return
        raise InputError(
            f"{source.name} was already dialled in run {latest.id} (completed); "
            f"pass --new to dial it again"
        )
    raise BusyError(
        f"{source.name} already has an unfinished run {latest.id} ({latest.status}); "
        f"continue it with `dialer resume {latest.id}` or pass --new"
    )


def import_run(
    store: Store,
    source: LeadSource,
    settings: Settings,
    target: Target,
    now: float,
    campaign: str | None = None,
    skip: Callable[[Any], tuple[str, str] | None] | None = None,
) -> int:
    return store.create_run(
        source=source.name,
        source_key=source.key,
        leads=source,
        target=target.key,
        base_url=None if target.simulated else target.base_url,
        from_number=target.from_number,
        concurrency=settings.dialing.concurrency,
        settings=run_settings(settings),
        now=now,
        campaign=campaign,
        skip=skip,
    )


# -- driving ------------------------------------------------------------------------------------


def options_for(run_: Run, target: Target) -> Options:
    dialing: dict[str, Any] = dict(run_.settings.get("dialing", {}))  # type: ignore[call-overload]
    speed = target.speed if target.simulated else 1.0
    return Options(
        poll_interval=float(dialing.get("poll_interval", 2.0)) / speed,
        reconcile_grace=float(dialing.get("reconcile_grace", 30.0)) / speed,
        max_attempts=int(dialing.get("max_attempts", 1)),
        retry_on=tuple(dialing.get("retry_on", ("busy", "no-answer"))),
        retry_delay=float(dialing.get("retry_delay", 900.0)) / speed,
    )


def params_for(run_: Run) -> Callable[[Claim], CallParams]:
    call: dict[str, Any] = dict(run_.settings.get("call", {}))  # type: ignore[call-overload]
    params = CallParams(
        twiml=call.get("twiml") or (None if call.get("url") else DEFAULT_TWIML),
        url=call.get("url"),
        timeout=call.get("timeout"),
        time_limit=call.get("time_limit"),
        record=call.get("record"),
        machine_detection=call.get("machine_detection"),
    )
    return lambda claim: params


def drive(
    store: Store,
    run_id: int,
    target: Target,
    *,
    on_event: Callable[[Event], None],
    should_drain: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    concurrency: int | None = None,
    calls: Any = None,
    stop_mode: str | None = None,
    passes: int | None = None,
) -> str:
    """Take the run's lock, become its driver and loop until it ends. Returns the final status."""
    run_ = store.get_run(run_id)
    with lease.RunLock(store.path, run_id) as lock:
        lock.acquire(run_)
        owner = uuid.uuid4().hex
        pid, host = lease.identity()
        if concurrency is not None:
            store.set_concurrency(run_id, concurrency)
        run_ = store.take_over(run_id, owner, pid, host, clock(), stop_mode)
        dialer = Dialer(
            store,
            calls if calls is not None else open_calls(target),
            run_id,
            owner,
            options=options_for(run_, target),
            params_for=params_for(run_),
            pick_from=lambda _to: target.from_number,
            clock=clock,
            rng=random.Random(),
        )
        on_event(Event("run-started", clock(), run_id, {"source": run_.source}))
        try:
            if passes is None:
                return run(dialer, sleep=sleep, on_event=on_event, should_drain=should_drain)
            for _ in range(passes):
                tick = dialer.tick()
                for event in tick.events:
                    on_event(event)
                if tick.done:
                    return tick.status
            store.set_status(run_id, RunStatus.STOPPED, clock(), owner_id=owner)
            return RunStatus.STOPPED
        except BaseException:
            # Interrupted or failed mid-pass: leave the run resumable, owned by nobody.
            current = store.get_run(run_id)
            if current.status in (RunStatus.RUNNING, RunStatus.STOPPING):
                store.set_status(run_id, RunStatus.STOPPED, clock(), owner_id=owner)
            raise


# -- reading ------------------------------------------------------------------------------------


def snapshot(store: Store, run_id: int, now: float) -> dict[str, Any]:
    """The run's status object: the seed's fields first, then ours (keys are a contract)."""
    run_ = store.get_run(run_id)
    counts = store.counts(run_id)
    waiting, next_at = store.waiting(run_id, now)
    alive = lease.driver_alive(run_, now)
    status = run_.status
    if status in (RunStatus.RUNNING, RunStatus.STOPPING) and not alive:
        status = RunStatus.STOPPED  # its process is gone: resumable, not running
    return {
        "run_id": run_.id,
        "status": status,
        "queued": counts["queued"],
        "in_progress": counts["in_progress"],
        "completed": counts["completed"],
        "failed": counts["failed"],
        "total_leads": counts["total_leads"],
        "concurrency": run_.concurrency,
        "skipped": counts["skipped"],
        "skipped_reasons": store.skip_reasons(run_id),
        "needs_review": counts["needs_review"],
        "waiting_retry": waiting,
        "next_attempt_at": iso(next_at),
        "dialing": counts["dialing"],
        "calling": counts["calling"],
        "outcomes": counts["outcomes"],
        "source": run_.source,
        "campaign": run_.campaign,
        "target": "simulated" if run_.simulated else short_sid(run_.target),
        "driver_pid": run_.owner_pid if alive else None,
        "error": run_.error,
        "created_at": iso(run_.created_at),
        "started_at": iso(run_.started_at),
        "finished_at": iso(run_.finished_at),
    }


def call_item(row: dict[str, Any]) -> dict[str, Any]:
    """One `dialer calls` item (the seed's recent-calls shape)."""
    status = row["twilio_status"]
    outcome = OUTCOME_OF_STATUS[status].value if status in OUTCOME_OF_STATUS else None
    if row["result"] == "rejected":
        outcome = "rejected"
    return {
        "call_sid": row["call_sid"],
        "run_id": row["run_id"],
        "lead_name": row["lead_name"],
        "to": row["to"],
        "twilio_status": status,
        "outcome": outcome,
        "started_at": iso(row["started_at"] or row["claimed_at"]),
        "ended_at": iso(row["ended_at"]),
        "duration_s": row["duration_s"],
        "error_code": row["error_code"],
        "error_message": row["error_message"],
    }


def stop(store: Store, run_id: int, *, cancel: bool, now: float) -> Run:
    run_ = store.get_run(run_id)
    if run_.status not in (RunStatus.RUNNING, RunStatus.STOPPING):
        raise InputError(f"run {run_id} is {run_.status}, not running; nothing to stop")
    return store.request_stop(
        run_id, cancel=cancel, driver_alive=lease.driver_alive(run_, now), now=now
    )
