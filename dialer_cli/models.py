"""The shared vocabulary: job and run states, call outcomes, and the records passed between modules.

No I/O here, so every module can import it without pulling in sqlite, twilio or rich.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class JobState(StrEnum):
    """Where one lead stands. Only `queued` leads can be claimed."""

    QUEUED = "queued"
    DIALING = (
        "dialing"  # claimed and committed; the create request may or may not have reached Twilio
    )
    CALLING = "calling"  # Twilio gave us a SID; polled until terminal
    REVIEWING = (
        "reviewing"  # several candidate calls found: never redialled, holds its slot until all end
    )
    COMPLETED = "completed"  # answered
    FAILED = "failed"  # busy / no-answer / failed / canceled / rejected
    SKIPPED = "skipped"  # never dialled: invalid number, duplicate, do-not-call ...
    NEEDS_REVIEW = "needs_review"  # several candidate calls, all ended: a person must decide


# The seed's critical fix as a named constant: a call still being set up counts as a live one.
IN_FLIGHT: tuple[str, ...] = (JobState.DIALING, JobState.CALLING, JobState.REVIEWING)


class RunStatus(StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"  # stop asked, calls still finishing
    STOPPED = "stopped"
    COMPLETED = "completed"
    FAILED = "failed"  # account-level error; resumable once fixed


class Outcome(StrEnum):
    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"
    REJECTED = "rejected"  # Twilio refused the create for this lead (21211 and friends)


# Twilio's call statuses (call_enum_status in the 2010 API).
TWILIO_LIVE = frozenset({"queued", "ringing", "in-progress"})
TWILIO_TERMINAL = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})

OUTCOME_OF_STATUS: dict[str, Outcome] = {
    "completed": Outcome.ANSWERED,
    "busy": Outcome.BUSY,
    "no-answer": Outcome.NO_ANSWER,
    "failed": Outcome.FAILED,
    "canceled": Outcome.CANCELED,
}


@dataclass(slots=True)  # not frozen: a frozen dataclass is 5x slower to make, 0.5 s a 1M import
class Lead:
    """One row of a lead source. `e164` is None when the row is skipped (see `skip_reason`)."""

    line: int  # 1-based line (CSV) or row number (database) in the source
    phone: str  # as written in the source
    e164: str | None
    fields: dict[str, str]  # every column of the row, the phone column included
    skip_reason: str | None = None  # "missing-number", "invalid-number", "duplicate", ...
    skip_detail: str | None = None  # human-readable, e.g. "not a valid number for region US"

    @property
    def name(self) -> str:
        return lead_name(self.fields)


def lead_name(fields: dict[str, str]) -> str:
    """The column people recognise a lead by, for views and reports."""
    for key in ("name", "full_name", "first_name", "Name"):
        if fields.get(key):
            return fields[key]
    return ""


@dataclass(frozen=True)
class CallInfo:
    """What Twilio says about one call, reduced to what the dialer uses."""

    sid: str
    status: str  # one of Twilio's call statuses
    to: str = ""
    from_: str = ""
    date_created: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    duration: int | None = None
    answered_by: str | None = None
    direction: str | None = None
    price: str | None = None  # negative decimal string; null until some time after the end
    price_unit: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TWILIO_TERMINAL


@dataclass(frozen=True)
class CallParams:
    """What the create request says besides To and From (already filled per lead)."""

    twiml: str | None = None
    url: str | None = None
    timeout: int | None = None
    time_limit: int | None = None
    record: bool | None = None
    machine_detection: str | None = None


@dataclass(frozen=True)
class Event:
    """Something the loop did, for the views: plain lines, JSON Lines, the live table."""

    kind: (
        str  # run-started, call-placed, call-ended, call-rejected, call-unknown, call-adopted, ...
    )
    at: float  # epoch seconds
    run_id: int
    data: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """One campaign run as stored: what it dials, through which account, and who drives it."""

    id: int
    source: str
    source_key: str
    campaign: str | None
    status: str
    concurrency: int
    target: str  # the Twilio account SID, or "simulated"
    base_url: str | None
    from_number: str | None
    settings: dict[str, object]
    error: str | None
    owner_pid: int | None
    owner_host: str | None
    heartbeat_at: float | None
    stop_mode: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def simulated(self) -> bool:
        return self.target == "simulated"


@dataclass(frozen=True)
class Claim:
    """A job claimed for dialing: committed before the create request is sent."""

    job_id: int
    run_id: int
    token: str  # fences every later write about this attempt
    to: str
    from_number: str
    attempt: int
    fields: dict[str, str]
    claimed_at: float


@dataclass(frozen=True)
class LiveCall:
    """A call that holds a slot: being created, unconfirmed, live, or a review candidate."""

    job_id: int
    token: str
    job_state: str
    result: str  # pending | created | unknown | adopted | candidate
    sid: str | None
    to: str
    from_number: str
    twilio_status: str | None
    claimed_at: float
    checks: int
    name: str = ""
    next_at: float | None = None
    attempts: int = 0
    status_at: float | None = None  # when we saw its job's Twilio status change
    voicemail: str | None = None  # what became of its machine message (voicemail.py)
