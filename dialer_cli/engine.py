"""The scheduling loop: keep N calls in flight, poll them, reconcile what we are unsure of.

`Dialer.tick()` is one pass and takes its time from an injected clock, so tests step it; `run()`
is the only loop. The engine never sees the twilio package: it talks to anything shaped like
`Calls`, which in the product and in every test is the real adapter over HTTP.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from dialer_cli import voicemail
from dialer_cli.errors import AccountError, BusyError, TwilioFailure
from dialer_cli.models import (
    OUTCOME_OF_STATUS,
    CallInfo,
    CallParams,
    Claim,
    Event,
    JobState,
    LiveCall,
    RunStatus,
    lead_name,
)
from dialer_cli.rules import Hours, Pacer
from dialer_cli.store import Store
from dialer_cli.voicemail import MachineMessage

LIVE_STATUSES = ("queued", "ringing", "in-progress")
T = TypeVar("T")


class Calls(Protocol):
    """What the loop needs from Twilio; `twilio_adapter.TwilioCalls` provides it."""

    def create(self, to: str, from_: str, params: CallParams) -> CallInfo: ...
    def fetch(self, sid: str) -> CallInfo: ...
    def live(self) -> dict[str, CallInfo]: ...
    def recent(self, to: str, from_: str, since: float) -> list[CallInfo]: ...
    def end(self, sid: str, answered: bool) -> CallInfo: ...
    def redirect(self, sid: str, twiml: str | None, url: str | None) -> CallInfo: ...


@dataclass(frozen=True)
class Options:
    poll_interval: float = 2.0
    reconcile_grace: float = 30.0
    clock_skew: float = 60.0  # how far Twilio's date_created may trail our claim time
    max_attempts: int = 1
    retry_on: tuple[str, ...] = ("busy", "no-answer")
    retry_delay: float = 900.0
    heartbeat_every: float = 5.0
    max_backoff: float = 60.0
    # A call Twilio leaves queued or ringing past call.timeout + 120 s, or in progress past
    # call.time_limit + 120 s, is stuck there: it is ended rather than holding its line forever.
    ring_limit: float = 30.0 + 120.0
    talk_limit: float = 14400.0 + 120.0
    give_up_after: float = 300.0  # s with no answer at all from Twilio: the run fails
    report_every: float = 30.0  # while Twilio does not answer, say so this often
    amd_poll: float = voicemail.AMD_POLL  # poll this often while AMD has not decided
    amd_window: float = voicemail.AMD_WINDOW  # ... for at most this long after the answer


@dataclass
class Rules:
    """What the loop applies to each lead: what to send, from which number, when, how fast."""

    params_for: Callable[[Claim], CallParams]
    pick_from: Callable[[str], str]
    hours: Hours | None = None
    pacer: Pacer = field(default_factory=lambda: Pacer(None))
    blocked: Callable[[str], str | None] | None = None  # the do-not-call file
    machine_message: MachineMessage | None = None  # what an answering machine hears instead


@dataclass
class Tick:
    events: list[Event] = field(default_factory=list)
    done: bool = False
    status: str = RunStatus.RUNNING
    next_wake: float = 0.0


class Dialer:
    """Drives one run. The caller holds the run's lock and has called `store.take_over`."""

    def __init__(
        self,
        store: Store,
        calls: Calls,
        run_id: int,
        owner_id: str,
        *,
        options: Options,
        rules: Rules,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        no_wait: bool = False,
        deadline: float | None = None,
        should_drain: Callable[[], bool] = lambda: False,
    ):
        self.store, self.calls, self.run_id, self.owner_id = store, calls, run_id, owner_id
        self.options, self.rules, self.clock = options, rules, clock
        self.rng = rng or random.Random()
        self.draining = False  # Ctrl-C / SIGTERM / deadline: dial nothing new, let calls finish
        self._next_poll: dict[str, float] = {}  # call token -> when to ask Twilio again
        self._failures: dict[str, int] = {}  # call token -> consecutive transient errors
        self._ended: set[str] = set()  # SIDs we are ending (stop --cancel-active)
        self._create_blocked_until = 0.0
        self._last_heartbeat = -1e18
        self.no_wait = no_wait  # leave (exit 3) instead of waiting for retries or calling hours
        self._groups: list[str] | None = None  # zone groups of the leads still queued
        self._swept: dict[str, float] = {}  # zone group -> until when its leads were set waiting
        self._announced_wait: float | None = None
        self.deadline = deadline  # --until / --max-duration: then dial nothing new
        self.should_drain = should_drain  # Ctrl-C / SIGTERM, asked before every claim
        self._down_since: float | None = None  # first request Twilio did not answer at all
        self._down_in: Tick | None = None  # the pass of the last unanswered request
        self._down_reason = ""
        self._down_reported = -1e18
        self._probe_at = -1e18

    def drain(self) -> None:
        self.draining = True

    def _drain_asked(self, now: float, tick: Tick) -> bool:
        """Whether dialling must stop now. Asked before every claim, not once a pass: a signal
        or a deadline that lands mid-burst must not let the rest of the burst go out."""
        if not self.draining and self.should_drain():
            self.drain()
        if not self.draining and self.deadline is not None and now >= self.deadline:
            self.drain()
            tick.events.append(Event("deadline", now, self.run_id, {"at": self.deadline}))
        return self.draining

    # -- one pass -----------------------------------------------------------------------------

    def tick(self) -> Tick:
        now = self.clock()
        tick = Tick(next_wake=now + self.options.poll_interval)
        self._drain_asked(now, tick)
        self._heartbeat(now)
        run = self.store.get_run(self.run_id)
        live = self.store.live_calls(self.run_id)
        due = [c for c in live if self._settle(c, now, tick, cancel=run.stop_mode == "cancel")]
        self._poll_due(due, now, tick)
        polls = [self._next_poll.get(c.token, tick.next_wake) for c in live if c.sid]
        tick.next_wake = min([tick.next_wake, *polls])
        closed = self._closed_zones(now)
        if run.status == RunStatus.RUNNING and not self.draining:
            self._fill(now, tick, closed)
        self._finish_if_done(run.status, now, tick, closed)
        return tick

    def _heartbeat(self, now: float) -> None:
        if now - self._last_heartbeat < self.options.heartbeat_every:
            return
        if not self.store.heartbeat(self.run_id, self.owner_id, now):
            raise BusyError(f"run {self.run_id} was taken over by another process; stopping here")
        self._last_heartbeat = now

    def _settle(self, call: LiveCall, now: float, tick: Tick, *, cancel: bool) -> bool:
        """Reconcile or end what needs it; True when the call is due for a status poll."""
        if call.result == "unknown" and call.job_state == JobState.DIALING:
            if (call.next_at or 0) <= now:
                self._reconcile(call, now, tick)
            else:
                tick.next_wake = min(tick.next_wake, call.next_at or now)
            return False
        if call.sid is None:
            return False  # being created right now
        if call.job_state == JobState.REVIEWING and call.twilio_status in OUTCOME_OF_STATUS:
            return False  # a review candidate already ended (an adopted call that ended is polled)
        if cancel:
            self._end(call, now, tick)
            return False
        return self._next_poll.get(call.token, now) <= now

    # -- polling ------------------------------------------------------------------------------

    def _poll_due(self, due: list[LiveCall], now: float, tick: Tick) -> None:
        """Ask Twilio how the due calls are doing.

        A few calls are fetched one by one. Past that, one list request per live status
        (queued, ringing, in-progress) answers for all of them, and only the calls missing
        from those lists — ended, or caught between two statuses — are fetched: requests per
        poll interval stay flat as N grows instead of growing with it.
        """
        if len(due) <= len(LIVE_STATUSES):
            for call in due:
                self._poll(call, now, tick)
        else:
            self._poll_listed(due, now, tick)
        self._while_down(now, tick)

    def _poll_listed(self, due: list[LiveCall], now: float, tick: Tick) -> None:
        try:
            live = self._ask(now, tick, self.calls.live)
        except TwilioFailure as failure:
            if failure.kind == "account":
                self._fail_run(str(failure), now)
            delay = self._backoff("list", failure.retry_after)
            for call in due:
                self._next_poll[call.token] = now + delay
            if not failure.unreachable:  # that has its own event, not one per request
                data = {"error": str(failure), "retry_in": delay}
                tick.events.append(Event("poll-retry", now, self.run_id, data))
            return
        self._failures.pop("list", None)
        for call in due:
            info = live.get(call.sid or "")
            if info is None:
                self._poll(call, now, tick)
            else:
                self._seen(call, info, now, tick)

    def _poll(self, call: LiveCall, now: float, tick: Tick) -> None:
        assert call.sid is not None
        sid = call.sid
        try:
            info = self._ask(now, tick, lambda: self.calls.fetch(sid))
        except TwilioFailure as failure:
            self._on_poll_failure(call, failure, now, tick)
            return
        self._failures.pop(call.token, None)
        if info.terminal:
            self._ended_call(call, info, now, tick)
            return
        self._seen(call, info, now, tick)

    def _seen(self, call: LiveCall, info: CallInfo, now: float, tick: Tick) -> None:
        """A live status: record it if it changed, ask again one poll interval from now."""
        if info.status != call.twilio_status:
            self.store.update_status(call, info, now)
        self._next_poll[call.token] = now + self._poll_delay(call, info, now)
        overdue = self._overdue(call, info, now)
        if overdue:
            self.store.note_call(call.token, overdue)
            self._end(call, now, tick, reason=overdue)
        elif self._machine_message_due(call, info):
            self._drop_voicemail(call, info, now, tick)

    # -- voicemail drop -----------------------------------------------------------------------

    def _amd_watch(self, call: LiveCall, info: CallInfo) -> bool:
        """A call of ours whose machine message may still be due: answered, none sent yet."""
        return (
            self.rules.machine_message is not None
            and call.job_state == JobState.CALLING
            and call.voicemail is None
            and info.status == "in-progress"
        )

    def _poll_delay(self, call: LiveCall, info: CallInfo, now: float) -> float:
        """Answered, and AMD has not decided yet: ask again in about amd_poll, not a whole
        poll interval, since a machine's message starts only when we see the verdict. Bounded
        by amd_window after the answer, should Twilio never fill answered_by."""
        if not self._amd_watch(call, info) or info.answered_by:
            return self.options.poll_interval
        seen = call.twilio_status == "in-progress" and call.status_at is not None
        answered = call.status_at if seen and call.status_at else now
        if now - answered > self.options.amd_window:
            return self.options.poll_interval
        return min(self.options.amd_poll, self.options.poll_interval)

    def _machine_message_due(self, call: LiveCall, info: CallInfo) -> bool:
        return self._amd_watch(call, info) and voicemail.is_machine(info.answered_by)

    def _drop_voicemail(self, call: LiveCall, info: CallInfo, now: float, tick: Tick) -> None:
        """Redirect a machine-answered call to the machine message with one update, ever.

        `pending` is committed before the update leaves (as a claim before its create): a
        driver killed in between leaves it `pending`, which the next driver records as
        `unconfirmed` and never sends again. Sending on the other side of the crash would be
        worse: a second update restarts the message on the machine's recording."""
        assert self.rules.machine_message is not None and call.sid is not None
        if not self.store.voicemail_pending(call.token):
            return
        fields = self.store.lead_fields(call.job_id)
        twiml, url = self.rules.machine_message.for_lead(fields)
        sid = call.sid
        try:
            self._ask(now, tick, lambda: self.calls.redirect(sid, twiml, url))
        except TwilioFailure as failure:
            self._voicemail_failed(call, failure, now, tick)
            return
        self.store.voicemail_result(call.token, voicemail.DROPPED)
        self._emit(tick, "voicemail-dropped", now, call, sid=sid, answered_by=info.answered_by)

    def _voicemail_failed(
        self, call: LiveCall, failure: TwilioFailure, now: float, tick: Tick
    ) -> None:
        """Certainly not processed (429, Twilio already down): due again on the next poll.
        No answer or a 5xx: it may have played, so never again. Refused: say why."""
        if failure.kind in ("retry", "account"):
            self.store.voicemail_result(call.token, None)
            if failure.kind == "account":
                self._fail_run(str(failure), now)
            self._next_poll[call.token] = now + self._backoff(call.token, failure.retry_after)
            return
        if failure.kind == "unknown":
            result = voicemail.UNCONFIRMED
        else:
            too_late = failure.code == voicemail.NOT_IN_PROGRESS
            result = voicemail.TOO_LATE if too_late else voicemail.FAILED
        self.store.voicemail_result(call.token, result)
        data = {"sid": call.sid, "result": result, "error": str(failure)}
        self._emit(tick, "voicemail-not-dropped", now, call, **data)

    def _overdue(self, call: LiveCall, info: CallInfo, now: float) -> str | None:
        """Why a live call has outlived what its own limits allow, if it has."""
        if info.status == "in-progress":
            # From when we first saw it answered; before that is recorded, from the latest
            # moment it could have been answered.
            seen = call.job_state == JobState.CALLING and call.twilio_status == "in-progress"
            since = call.status_at if seen and call.status_at else None
            since = since if since is not None else call.claimed_at + self.options.ring_limit
            limit, what = self.options.talk_limit, "call.time_limit"
        else:
            since, limit, what = call.claimed_at, self.options.ring_limit, "call.timeout"
        if now - since <= limit:
            return None
        return f"ended by dialer: {info.status} for {now - since:.0f}s, past {what} + 120s"

    def _on_poll_failure(
        self, call: LiveCall, failure: TwilioFailure, now: float, tick: Tick
    ) -> None:
        if failure.kind == "account":
            self._fail_run(str(failure), now)
        if failure.kind == "not_found" and call.job_state == JobState.REVIEWING:
            # One candidate Twilio does not know is no verdict on the lead: the others are
            # still polled, and the lead goes to review when they end.
            self.store.drop_candidate(call, f"Twilio does not know call {call.sid}", now)
            return
        if failure.kind == "not_found":
            self.store.fail_call(call, f"Twilio does not know call {call.sid}", now)
            self._emit(tick, "call-ended", now, call, outcome="failed", error=str(failure))
            return
        delay = self._backoff(call.token, failure.retry_after)
        self._next_poll[call.token] = now + delay
        if not failure.unreachable:
            self._emit(tick, "poll-retry", now, call, error=str(failure), retry_in=round(delay, 2))

    def _ended_call(self, call: LiveCall, info: CallInfo, now: float, tick: Tick) -> None:
        outcome = OUTCOME_OF_STATUS[info.status]
        retry_at = None
        machine = voicemail.is_machine(info.answered_by) and "machine" in self.options.retry_on
        if (
            call.job_state == JobState.CALLING
            and (outcome.value in self.options.retry_on or machine)
            and call.attempts < self.options.max_attempts
        ):
            retry_at = now + self.options.retry_delay
        self.store.end_call(call, info, now, retry_at)
        self._next_poll.pop(call.token, None)
        extra = {"retry_at": retry_at} if retry_at else {}
        self._emit(
            tick,
            "call-ended",
            now,
            call,
            sid=info.sid,
            outcome=outcome.value,
            duration=info.duration,
            answered_by=info.answered_by,
            **extra,
        )

    def _end(self, call: LiveCall, now: float, tick: Tick, reason: str | None = None) -> None:
        """End a live call (stop --cancel-active): cancel it if it has not been answered, hang
        up if it has; a call answered in between is hung up on the next pass."""
        assert call.sid is not None
        sid = call.sid
        try:
            info = self._ask(now, tick, lambda: self.calls.fetch(sid))
            if not info.terminal:
                answered = info.status == "in-progress"
                info = self._ask(now, tick, lambda: self.calls.end(sid, answered=answered))
        except TwilioFailure as failure:
            self._emit(tick, "cancel-retry", now, call, error=str(failure))
            return
        if call.sid not in self._ended:
            self._ended.add(call.sid)
            extra = {"reason": reason} if reason else {}
            self._emit(tick, "call-canceling", now, call, sid=call.sid, **extra)
        if info.terminal:
            self._ended_call(call, info, now, tick)

    # -- reconciliation -----------------------------------------------------------------------

    def _reconcile(self, call: LiveCall, now: float, tick: Tick) -> None:
        """Find out whether a create whose answer we never saw placed a call.

        One match: adopt it. None on two checks a grace period apart: no call exists, the lead
        may be dialled again. Several: a person must decide; never redial.
        Twilio's clock may differ from ours by more than `clock_skew`: the adapter widens the
        window by the offset it measures from Twilio's Date headers.
        """
        since = call.claimed_at - self.options.clock_skew
        try:
            found = self._ask(
                now, tick, lambda: self.calls.recent(call.to, call.from_number, since)
            )
        except TwilioFailure as failure:
            if failure.kind == "account":
                self._fail_run(str(failure), now)
            delay = self._backoff(call.token, failure.retry_after)
            self.store.mark_unknown(call.token, str(failure), now + delay, now)
            return
        known = self.store.known_sids(call.to)
        mine = [c for c in found if c.sid not in known and c.direction in (None, "outbound-api")]
        if len(mine) == 1:
            self.store.adopt(call.token, mine[0], now)
            self._next_poll[call.token] = now
            self._emit(tick, "call-adopted", now, call, sid=mine[0].sid)
        elif len(mine) > 1:
            self.store.hold_for_review(call.token, mine, now)
            self._emit(tick, "call-needs-review", now, call, sids=[c.sid for c in mine])
        elif self.store.checked(call.token, now + self.options.reconcile_grace, now) >= 2:
            self.store.release(call.token, now, "none_found", now)
            self._emit(tick, "call-not-placed", now, call)

    # -- filling slots ------------------------------------------------------------------------

    def _closed_zones(self, now: float) -> list[str]:
        """Zone groups outside their calling hours now; their leads are set waiting until the
        window opens, so `status` can say how many wait and for how long."""
        if self.rules.hours is None:
            return []
        if self._groups is None:
            self._groups = self.store.zone_groups(self.run_id)
        closed = []
        for group in self._groups:
            zones = tuple(group.split(","))
            if self.rules.hours.open_all(zones, now):
                continue
            closed.append(group)
            if self._swept.get(group, 0) <= now:
                opens = self.rules.hours.next_open(zones, now) or now + 7 * 86400
                self.store.wait_for_hours(self.run_id, group, opens, now)
                self._swept[group] = opens
        return closed

    def _closed_until(self, group: str) -> float | None:
        """None while a zone group's calling hours hold, else when they next open. Asked by the
        claim for each lead it takes, on the clock of that moment: the one check no path skips
        (a retry, a lead requeued by reconciliation, a lead that was in flight at start-up)."""
        assert self.rules.hours is not None
        now, zones = self.clock(), tuple(group.split(","))
        if self.rules.hours.open_all(zones, now):
            return None
        return self.rules.hours.next_open(zones, now) or now + 7 * 86400

    def _fill(self, now: float, tick: Tick, closed: list[str]) -> None:
        while now >= self._create_blocked_until and not self._drain_asked(self.clock(), tick):
            allowed = self.rules.pacer.next_allowed(now)
            if allowed > now:
                tick.next_wake = min(tick.next_wake, allowed)
                return
            claim = self.store.claim(
                self.run_id,
                self.owner_id,
                now,
                self.rules.pick_from,
                closed,
                self.rules.blocked,
                self._closed_until if self.rules.hours else None,
            )
            if claim is None:
                return
            self.rules.pacer.record(now)
            if not self._place(claim, now, tick):
                return
        tick.next_wake = min(tick.next_wake, self._create_blocked_until)

    def _place(self, claim: Claim, now: float, tick: Tick) -> bool:
        """Send the create for a committed claim; False when creates must pause."""

        base = {"to": claim.to, "name": lead_name(claim.fields), "attempt": claim.attempt}
        params = self.rules.params_for(claim)
        try:
            info = self._ask(
                now, tick, lambda: self.calls.create(claim.to, claim.from_number, params)
            )
        except TwilioFailure as failure:
            return self._on_create_failure(claim, failure, now, tick, base)
        self._failures.pop("create", None)  # a create went through: back-off starts over
        self.store.save_sid(claim, info, now)
        self._next_poll[claim.token] = now + self.options.poll_interval
        tick.events.append(Event("call-placed", now, self.run_id, {**base, "sid": info.sid}))
        return True

    def _on_create_failure(
        self, claim: Claim, failure: TwilioFailure, now: float, tick: Tick, base: dict[str, object]
    ) -> bool:
        kind, code = failure.kind, failure.code
        data = {**base, "error": str(failure), "code": code}
        if kind == "rejected":
            self.store.reject(claim.token, code, failure.message, now)
            tick.events.append(Event("call-rejected", now, self.run_id, data))
            return True
        if kind == "unknown":
            self.store.mark_unknown(claim.token, str(failure), now, now)
            tick.events.append(Event("call-unknown", now, self.run_id, data))
            if failure.retry_after is not None:  # a 503 that asked us to wait: the others wait
                self._create_blocked_until = now + self._backoff("create", failure.retry_after)
            return not (failure.unreachable or failure.retry_after is not None)
        if kind == "retry":
            delay = self._backoff("create", failure.retry_after)
            self.store.release(claim.token, now + delay, "retry", now)
            self._create_blocked_until = now + delay
            if not failure.unreachable:  # an unreachable Twilio has its own event
                data = {**data, "retry_in": delay}
                tick.events.append(Event("create-retry", now, self.run_id, data))
            return False
        self.store.release(claim.token, now, "refused", now)
        self._fail_run(str(failure), now)
        return False

    # -- endings ------------------------------------------------------------------------------

    def _finish_if_done(
        self, status: str, now: float, tick: Tick, closed: list[str] | None = None
    ) -> None:
        """End the run once nothing is in flight: completed, or stopped when asked to stop.

        A run found neither `running` nor already `completed` was stopped behind this driver's
        back (`stop` while it was stalled writes `stopping`, or `stopped` if it judged the
        driver dead): it has dialled nothing since, and now exits instead of looping with the
        lock held.
        """
        in_flight, queued = self.store.pending(self.run_id)
        if in_flight:
            return
        due = self._next_due(closed or []) if queued else None
        waiting = due is not None and due > now
        stopped = status not in (RunStatus.RUNNING, RunStatus.COMPLETED)
        if stopped or self.draining or (waiting and self.no_wait):
            final = RunStatus.STOPPED
        elif not queued:
            final = RunStatus.COMPLETED
        else:
            if waiting and due is not None:
                tick.next_wake = min(tick.next_wake, due)
                if due != self._announced_wait:
                    self._announced_wait = due
                    tick.events.append(Event("waiting", now, self.run_id, {"next_at": due}))
            return
        for group in closed or []:  # leads requeued after their group was set waiting
            if group in self._swept:
                self.store.wait_for_hours(self.run_id, group, self._swept[group], now)
        self.store.set_status(self.run_id, final, now, owner_id=self.owner_id)
        tick.done, tick.status = True, final
        counts = self.store.counts(self.run_id)
        tick.events.append(Event("run-finished", now, self.run_id, {"status": final, **counts}))

    def _next_due(self, closed: list[str]) -> float | None:
        """When a lead may next be dialled. A lead of a zone group outside its hours waits
        for the window, whatever its own next_at says: one requeued after the group was swept
        (a released attempt, a retry come due) is due only when the window opens."""
        due = self.store.next_due(self.run_id, closed)
        opens = [self._swept[g] for g in closed if g in self._swept]
        return min([t for t in (due, *opens) if t is not None], default=None)

    def _fail_run(self, message: str, now: float) -> None:
        self.store.set_status(self.run_id, RunStatus.FAILED, now, message, self.owner_id)
        raise AccountError(
            f"run {self.run_id} failed: {message}; fix it, then `dialer resume {self.run_id}`"
        )

    # -- a Twilio that does not answer ----------------------------------------------------------

    @property
    def unreachable(self) -> str | None:
        """Why Twilio is not answering right now (None while it answers)."""
        return self._down_reason if self._down_since is not None else None

    def _ask(self, now: float, tick: Tick, request: Callable[[], T]) -> T:
        """Every request to Twilio goes through here, to learn whether Twilio answers at all.

        Once a request of this pass got no answer, the rest of the pass sends
        nothing: each would wait up to http_timeout, so a pass against a dead Twilio costs one
        timeout, not N, and a stop is heard within a timeout and a poll interval. Those
        requests fail as "retry" (certainly not sent): a create's claim goes back unharmed."""
        if self._down_since is not None and self._down_in is tick:
            raise TwilioFailure("retry", self._down_reason, unreachable=True)
        try:
            result = request()
        except TwilioFailure as failure:
            if failure.unreachable:
                self._unanswered(failure, now, tick)
            else:
                self._answered(now, tick)
            raise
        self._answered(now, tick)
        return result

    def _unanswered(self, failure: TwilioFailure, now: float, tick: Tick) -> None:
        self._down_in, self._down_reason = tick, str(failure)
        self._probe_at = now + self._backoff("twilio", None)
        self._block_creates(now)
        if self._down_since is None:
            self._down_since = now
            self._report_down(now, tick)

    def _answered(self, now: float, tick: Tick) -> None:
        if self._down_since is None:
            return
        data = {"since": self._down_since, "down_for": round(now - self._down_since, 1)}
        tick.events.append(Event("twilio-reachable", now, self.run_id, data))
        self._down_since = None
        self._failures.pop("twilio", None)
        soon = now + self.options.poll_interval  # polls backed off while it was down
        self._next_poll = {token: min(at, soon) for token, at in self._next_poll.items()}

    def _while_down(self, now: float, tick: Tick) -> None:
        """Once per pass while Twilio does not answer: probe it if nothing else asked, dial
        nothing new, say so now and then, and give up (the run fails, resumable) after
        `give_up_after` seconds without a single answer."""
        if self._down_since is None:
            return
        if self._down_in is not tick and now >= self._probe_at:
            try:
                self._ask(now, tick, self.calls.live)
            except TwilioFailure:
                pass
        if self._down_since is None:
            return
        self._block_creates(now)
        tick.next_wake = min(tick.next_wake, max(self._probe_at, now))
        down_for = now - self._down_since
        if down_for >= self.options.give_up_after:
            self._fail_run(
                f"no answer from Twilio for {down_for:.0f} s ({self._down_reason}); "
                "check the network and twilio.base_url",
                now,
            )
        if now - self._down_reported >= self.options.report_every:
            self._report_down(now, tick)

    def _block_creates(self, now: float) -> None:
        """No create while Twilio does not answer: each would become an unknown attempt."""
        self._create_blocked_until = max(
            self._create_blocked_until, now + self.options.poll_interval
        )

    def _report_down(self, now: float, tick: Tick) -> None:
        assert self._down_since is not None
        self._down_reported = now
        data = {
            "since": self._down_since,
            "for_s": round(now - self._down_since, 1),
            "error": self._down_reason,
        }
        tick.events.append(Event("twilio-unreachable", now, self.run_id, data))

    def stranded(self) -> bool:
        """Told to stop (drain, deadline, `dialer stop`) while Twilio does not answer: waiting
        for calls in flight could last for ever, so the driver leaves them to `resume`."""
        if self._down_since is None:
            return False
        return self.draining or self.store.get_run(self.run_id).status != RunStatus.RUNNING

    def leave(self) -> Tick:
        """Stop now: calls in flight stay as the database has them (unknown attempts stay
        unknown) for `dialer resume` to settle once Twilio answers."""
        now = self.clock()
        self.store.set_status(self.run_id, RunStatus.STOPPED, now, owner_id=self.owner_id)
        in_flight, _ = self.store.pending(self.run_id)
        data = {"in_flight": in_flight, "error": self._down_reason}
        tick = Tick(done=True, status=RunStatus.STOPPED)
        tick.events.append(Event("left-unsettled", now, self.run_id, data))
        counts = self.store.counts(self.run_id)
        tick.events.append(
            Event("run-finished", now, self.run_id, {"status": RunStatus.STOPPED, **counts})
        )
        return tick

    def _backoff(self, key: str, retry_after: float | None) -> float:
        """Exponential back-off with full jitter, or what Twilio asked for."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        if retry_after is not None:
            return max(retry_after, 0.0)
        cap = min(self.options.max_backoff, self.options.poll_interval * 2**n)
        return self.options.poll_interval + self.rng.uniform(0, cap)

    def _emit(self, tick: Tick, kind: str, now: float, call: LiveCall, **data: object) -> None:
        base: dict[str, object] = {"to": call.to, "name": call.name}
        tick.events.append(Event(kind, now, self.run_id, {**base, **data}))


def run(
    dialer: Dialer,
    *,
    sleep: Callable[[float], None],
    on_event: Callable[[Event], None],
    should_drain: Callable[[], bool] = lambda: False,
) -> str:
    """The only loop: tick, report, sleep until something is due. Returns the final run status.

    Told to stop while Twilio does not answer, it leaves at once instead of waiting for calls
    it cannot hear from."""
    while True:
        if should_drain():
            dialer.drain()
        tick = dialer.leave() if dialer.stranded() else dialer.tick()
        for event in tick.events:
            on_event(event)
        if tick.done:
            return tick.status
        if should_drain():
            dialer.drain()
        if dialer.stranded():
            continue  # leave without sleeping
        delay = min(tick.next_wake - dialer.clock(), dialer.options.poll_interval)
        sleep(max(delay, 0.0))
