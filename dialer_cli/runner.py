"""What the commands do, without the terminal: choose the target, drive a run, stop it, describe it.

Importing a source into a run lives in `intake.py`.

The CLI resolves flags and picks a view; everything here takes plain values and returns plain
values or events, so the same code serves `start`, `resume`, cron and the tests.
"""

from __future__ import annotations

import dataclasses
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dialer_cli import lease, rules, voicemail
from dialer_cli.config import Settings, require_credentials
from dialer_cli.engine import Dialer, Options, Rules, run
from dialer_cli.errors import ConfigError, InputError, TwilioFailure, UnreachableError
from dialer_cli.models import OUTCOME_OF_STATUS, CallParams, Claim, Event, Run, RunStatus
from dialer_cli.prices import PriceCollector
from dialer_cli.store import Store

SIMULATED = "simulated"
SIM_FROM_NUMBER = "+15005550006"  # Twilio's test-credentials From number that always passes
SIM_PRICE_DELAY = 10.0  # simulated seconds before the simulator prices an ended call, as Twilio
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
    give_up_after: float = 300.0  # twilio.give_up_after: s without any answer, then the run fails

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
    return Target(
        tw.account_sid,
        tw.auth_token,
        tw.base_url,
        tw.http_timeout,
        from_number,
        give_up_after=tw.give_up_after,
    )


@contextmanager
def simulator_target(
    speed: float, seed: int, http_timeout: float, give_up_after: float = 300.0
) -> Iterator[Target]:
    """Serve the built-in simulator on a free loopback port for the length of a run."""
    from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator

    with Simulator(speed=speed, seed=seed, price_delay_s=SIM_PRICE_DELAY) as sim:
        yield Target(
            DEFAULT_ACCOUNT_SID,
            DEFAULT_AUTH_TOKEN,
            sim.url,
            http_timeout,
            SIM_FROM_NUMBER,
            simulated=True,
            speed=speed,
            give_up_after=give_up_after,
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


def open_calls(target: Target, clock: Callable[[], float] = time.time) -> Any:
    from dialer_cli.twilio_adapter import TwilioCalls

    return TwilioCalls(
        target.account_sid, target.auth_token, target.base_url, target.http_timeout, clock
    )


def reach(target: Target, then: str) -> None:
    """Prove that Twilio answers, with one read-only request, before anything is written or
    dialled: a Twilio that cannot be reached is one line and exit 1, not a silent wait.

    `then` says what did not happen ("nothing was written"). Any HTTP answer proves the way
    is open: a refusal of the credentials fails the run as before, resumable once fixed."""
    try:
        open_calls(target).check_account()
    except TwilioFailure as failure:
        if failure.unreachable:
            raise UnreachableError(
                f"cannot reach Twilio at {target.base_url} ({failure}); {then}"
            ) from None


# -- driving ------------------------------------------------------------------------------------


def _section(run_: Run, name: str) -> dict[str, Any]:
    value = run_.settings.get(name) or {}
    return dict(value) if isinstance(value, dict) else {}


def _speed(target: Target) -> float:
    """How much faster than ours a simulated Twilio's time runs (1 for Twilio)."""
    return target.speed if target.simulated else 1.0


def options_for(run_: Run, target: Target) -> Options:
    dialing, call = _section(run_, "dialing"), _section(run_, "call")
    speed = _speed(target)
    ring = float(call.get("timeout") or 60)  # Twilio rings 60 s when Timeout is not sent
    talk = float(call.get("time_limit") or 14400)  # and allows 4 h without TimeLimit
    return Options(
        ring_limit=(ring + 120.0) / speed,
        talk_limit=(talk + 120.0) / speed,
        poll_interval=float(dialing.get("poll_interval", 2.0)) / speed,
        reconcile_grace=float(dialing.get("reconcile_grace", 30.0)) / speed,
        max_attempts=int(dialing.get("max_attempts", 1)),
        retry_on=tuple(dialing.get("retry_on", ("busy", "no-answer"))),
        retry_delay=float(dialing.get("retry_delay", 900.0)) / speed,
        give_up_after=target.give_up_after,
        amd_poll=voicemail.AMD_POLL / speed,
        amd_window=voicemail.AMD_WINDOW / speed,
    )


def params_for(run_: Run) -> Callable[[Claim], CallParams]:
    """The create request's parameters, with each lead's columns filled into the templates."""
    call = _section(run_, "call")
    params = CallParams(
        twiml=call.get("twiml") or (None if call.get("url") else DEFAULT_TWIML),
        url=call.get("url"),
        timeout=call.get("timeout"),
        time_limit=call.get("time_limit"),
        record=call.get("record"),
        machine_detection=call.get("machine_detection"),
    )
    twiml = params.twiml if rules.template_fields(params.twiml) else None
    url = params.url if rules.template_fields(params.url) else None
    if twiml is None and url is None:
        return lambda claim: params

    def fill(claim: Claim) -> CallParams:
        return dataclasses.replace(
            params,
            twiml=rules.fill_twiml(twiml, claim.fields) if twiml else params.twiml,
            url=rules.fill_url(url, claim.fields) if url else params.url,
        )

    return fill


def engine_rules(run_: Run, target: Target) -> Rules:
    """Templates, calling hours, pacing, caller ID and the do-not-call file, from the run's own
    settings (so a resume dials exactly as the start did)."""
    dialing, leads = _section(run_, "dialing"), _section(run_, "leads")
    hours = None
    if dialing.get("calling_hours"):
        hours = rules.Hours.parse(dialing["calling_hours"], dialing.get("calling_days"))
    dnc_path = dialing.get("do_not_call")
    dnc = rules.DncFile(Path(dnc_path), leads.get("default_region", "US")) if dnc_path else None
    pool = run_.settings.get("from_numbers") or [target.from_number]
    cps = dialing.get("calls_per_second")
    speed = target.speed if target.simulated else 1.0

    def blocked(e164: str) -> str | None:
        if dnc is None:
            return None
        dnc.refresh()
        return "do-not-call" if e164 in dnc else None

    return Rules(
        params_for=params_for(run_),
        pick_from=rules.CallerId(pool if isinstance(pool, list) else [target.from_number]),
        hours=hours,
        pacer=rules.Pacer(float(cps) * speed if cps else None),
        blocked=blocked,
        machine_message=voicemail.MachineMessage.from_call(_section(run_, "call")),
    )


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
    no_wait: bool = False,
    deadline: float | None = None,
    writeback_flush: float | None = None,
    tend: Callable[[float], object] = lambda now: None,
) -> str:
    """Take the run's lock, become its driver and loop until it ends. Returns the final status.

    A run with a `writeback` statement gets its writer thread for as long as it is driven; on
    the way out, pending rows are tried once more for at most `writeback_flush` seconds.
    Between the loop's passes (never inside one, so never between a claim and its create),
    prices are collected and `tend(now)` runs (the metrics file); a run that ends then waits,
    boundedly, for the prices of its last calls.
    """
    run_ = store.get_run(run_id)
    with lease.RunLock(store.path, run_id) as lock:
        lock.acquire_run(run_)
        if stop_mode is None and store.get_run(run_id).status == RunStatus.COMPLETED:
            # its driver finished it between our look and our lock: never mark it running again
            raise InputError(f"run {run_id} is already completed; nothing to resume")
        owner = uuid.uuid4().hex
        pid, host = lease.identity()
        if concurrency is not None:
            store.set_concurrency(run_id, concurrency)
        run_ = store.take_over(run_id, owner, pid, host, clock(), stop_mode)
        dialer = Dialer(
            store,
            calls if calls is not None else open_calls(target, clock),
            run_id,
            owner,
            options=options_for(run_, target),
            rules=engine_rules(run_, target),
            clock=clock,
            rng=random.Random(),
            no_wait=no_wait,
            deadline=deadline,
            should_drain=should_drain,
        )
        writer = start_writer(store, run_)
        on_event(Event("run-started", clock(), run_id, {"source": run_.source}))
        collector = PriceCollector(store, dialer.calls, run_id, speed=_speed(target))

        def between_passes(seconds: float) -> None:
            if stop_mode is None:
                collector.tend(clock())
            tend(clock())
            sleep(seconds)

        try:
            if passes is None:
                status = run(
                    dialer, sleep=between_passes, on_event=on_event, should_drain=should_drain
                )
                if stop_mode is None:
                    collector.finish(
                        clock=clock,
                        sleep=sleep,
                        give_up=should_drain,
                        waiting=lambda n, s: on_event(
                            Event("prices-waiting", clock(), run_id, {"calls": n, "wait_s": s})
                        ),
                    )
            else:
                status = _passes(dialer, passes, on_event)
        except BaseException:
            # Interrupted or failed mid-pass: leave the run resumable, owned by nobody.
            current = store.get_run(run_id)
            if current.status in (RunStatus.RUNNING, RunStatus.STOPPING):
                store.set_status(run_id, RunStatus.STOPPED, clock(), owner_id=owner)
            raise
        finally:
            if writer is not None:
                writer.close(writeback_flush)
    if stop_mode is not None and dialer.unreachable:
        # cleanup-stuck, stop --cancel-active: what could not be asked is not reported as done
        raise UnreachableError(
            f"cannot reach Twilio at {target.base_url} ({dialer.unreachable}); "
            f"run {run_id}'s calls in flight were left as they were"
        )
    return status


def _passes(dialer: Dialer, passes: int, on_event: Callable[[Event], None]) -> str:
    """A few passes and no more (cleanup-stuck); the run is then left stopped, resumable."""
    for _ in range(passes):
        tick = dialer.tick()
        for event in tick.events:
            on_event(event)
        if tick.done:
            return tick.status
    dialer.store.set_status(
        dialer.run_id, RunStatus.STOPPED, dialer.clock(), owner_id=dialer.owner_id
    )
    return RunStatus.STOPPED


def start_writer(store: Store, run_: Run) -> Any:
    """The thread writing outcomes back to the run's source, if it has a statement."""
    setting = run_.settings.get("writeback")
    if not isinstance(setting, dict):
        return None
    from dialer_cli.writeback import Writer

    return Writer(store.path, run_.id, setting).start()


# -- reading ------------------------------------------------------------------------------------


def snapshot(store: Store, run_id: int, now: float) -> dict[str, Any]:
    """The run's status object: the seed's fields first, then ours (keys are a contract)."""
    run_ = store.get_run(run_id)
    counts = store.counts(run_id)
    waits = store.waiting(run_id, now)
    retry = [waits[k] for k in ("retry", "throttle") if k in waits]
    hours = waits.get("hours", (0, None))
    alive = lease.driver_alive(store.path, run_, now)
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
        "waiting_retry": sum(n for n, _ in retry),
        "waiting_hours": hours[0],
        "next_attempt_at": iso(min((t for _, t in waits.values() if t), default=None)),
        "next_window_at": iso(hours[1]),
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
        "writeback": store.writeback_counts(run_id) if run_.settings.get("writeback") else None,
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
        if cancel and store.pending(run_id)[0]:
            return run_  # not driven, but calls are still live: the caller ends them
        raise InputError(f"run {run_id} is {run_.status}, not running; nothing to stop")
    return store.request_stop(
        run_id, cancel=cancel, driver_alive=lease.driver_alive(store.path, run_, now), now=now
    )


def deadline(until: str | None, max_duration: str | None, now: float) -> float | None:
    """The earlier of --until HH:MM (local time, the next such moment) and --max-duration."""
    ends = []
    if until is not None:
        ends.append(next_local_time(until, now))
    if max_duration is not None:
        ends.append(now + parse_duration(max_duration))
    return min(ends) if ends else None


def next_local_time(hhmm: str, now: float) -> float:
    try:
        hours, minutes = (int(p) for p in hhmm.split(":"))
        local = datetime.fromtimestamp(now).astimezone()
        at = local.replace(hour=hours, minute=minutes, second=0, microsecond=0)
    except ValueError:
        raise InputError(f"--until {hhmm!r}: expected a local time such as 06:30") from None
    if at.timestamp() <= now:
        at += timedelta(days=1)
    return at.timestamp()


def parse_duration(text: str) -> float:
    """90s, 45m, 2h, 1h30m (a bare number is seconds)."""
    match = re.fullmatch(
        r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*"
        r"(?:(\d+(?:\.\d+)?)s?)?\s*",
        text,
    )
    if not text.strip() or match is None or not any(match.groups()):
        raise InputError(f"--max-duration {text!r}: expected a duration such as 90s, 45m or 2h")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds
