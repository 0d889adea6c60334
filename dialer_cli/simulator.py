"""A Twilio-compatible server for the Calls subset of the 2010 API: demo backend and test referee.

The real `twilio` client talks to it over loopback HTTP, so nothing else in the product knows it
is simulated. A call's status is derived lazily from (created_at, plan, speed, clock), not timers,
so tests can drive a campaign with a fake clock; only p_slow and hold_creates use real time. The
ledger (calls, requests, max_live) is how tests judge "never more than N live" and "nobody dialled
twice". Stdlib only and nothing from dialer_cli: a referee shares no code with the player.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime, formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

DEFAULT_ACCOUNT_SID = "AC" + "0" * 31 + "1"
DEFAULT_AUTH_TOKEN = "simulator-token"
API = "/2010-04-01"
STATUSES = "queued ringing in-progress completed busy failed no-answer canceled".split()
LIVE = frozenset({"queued", "ringing", "in-progress"})
ENDABLE = {"canceled": ("queued", "ringing"), "completed": ("queued", "ringing", "in-progress")}
E164 = re.compile(r"\+[1-9]\d{1,14}")
MAGIC_TO = {  # Twilio's test-credential numbers (https://www.twilio.com/docs/iam/test-credentials)
    "+15005550001": (21217, "Phone number does not appear to be valid"),
    "+15005550002": (21214, "'To' phone number cannot be reached"),
    "+15005550003": (21215, "Account not authorized to call this number (geo permissions)"),
    "+15005550004": (21216, "Call blocked by Twilio"),
}
# Where Twilio has no dedicated code: 21200 ("Calls Resource", its generic Calls error) for a bad
# Calls parameter (Twiml over 4000 chars, update Status other than canceled/completed, PageSize,
# Page, PageToken, date filters, list Status); 400 ("Bad Request") for the same elsewhere.
BAD_PARAM = 21200
FILTERS = "To From ParentCallSid Status StartTime StartTime< StartTime> EndTime EndTime< EndTime>"
SUBRESOURCES = "notifications recordings payments events siprec streams transcriptions".split()
NUMBER_NULLS = """address_sid identity_sid sms_application_sid sms_fallback_url sms_url trunk_sid
    status_callback voice_application_sid voice_fallback_url voice_url emergency_address_sid
    bundle_sid""".split()
NUMBER_POSTS = "sms_fallback_method sms_method status_callback_method voice_fallback_method".split()
OUTCOME_CAPS = (("completed", 0.65), ("no-answer", 0.80), ("busy", 0.92), ("failed", 1.0))
# Who picks up an answered call in the default plans (AMD reports `unknown` for "silence").
PARTY_CAPS = (("human", 0.65), ("machine", 0.93), ("fax", 0.95), ("silence", 1.0))
AMD_MODES = ("Enable", "DetectMessageEnd")
AMD_TIMEOUT_S = 30  # Twilio's MachineDetectionTimeout default: then AnsweredBy is `unknown`
NOT_IN_PROGRESS = 21220  # Twilio's "Invalid call state": a redirect of a call that has ended
Params = dict[str, list[str]]


@dataclass(frozen=True)
class CallPlan:
    """How one call plays out, in simulated seconds (divided by speed for the clock)."""

    outcome: str  # 'completed' | 'busy' | 'no-answer' | 'failed'
    queue_s: float = 0.2
    ring_s: float = 3.0  # for busy/no-answer/failed: time until that terminal status
    talk_s: float = 30.0  # only for 'completed'
    answered_by: str | None = None  # shown verbatim once answered, AMD or not (overrides party)
    # With MachineDetection on the create, who picks up decides AnsweredBy, as on Twilio:
    # human | machine | fax | silence (detection times out: `unknown`).
    party: str = "human"
    detect_s: float = 2.5  # answer to AnsweredBy for a human or a fax, and for Enable's machine
    greeting_s: float = 8.0  # a machine's greeting: DetectMessageEnd reports at its end
    greeting_end: str = "beep"  # beep | silence | other: machine_end_<this>


@dataclass
class Faults:
    """Fault injection, mutable at run time; draws come from an RNG seeded with `seed`."""

    p_429: float = 0.0  # any request: 429/20429 + Retry-After, nothing processed
    p_500: float = 0.0  # any request: 500/20500, nothing processed
    p_503: float = 0.0  # any request: 503/20503 + Retry-After, nothing processed
    retry_after_s: float | None = 1.0  # the Retry-After of p_429 and p_503 (None: no header)
    p_500_after_create: float = 0.0  # create: the call IS created, then 500
    p_drop: float = 0.0  # create: the call IS created, then the socket closes unanswered
    p_slow: float = 0.0  # any request: answered slow_s REAL seconds late (after processing)
    slow_s: float = 0.0
    list_lag_s: float = 0.0  # a new call is hidden from list results for this many simulated s
    p_429_redirect: float = 0.0  # update with Twiml/Url: 429 + Retry-After, nothing processed
    p_500_after_redirect: float = 0.0  # update with Twiml/Url: the call IS redirected, then 500
    seed: int = 0


@dataclass
class SimCall:
    """Ledger entry for one call. Times are clock (epoch) seconds; plan durations are simulated."""

    sid: str
    to: str
    from_: str
    created_at: float
    plan: CallPlan
    canceled_at: float | None = None  # when update(Status=canceled|completed) ended it
    seq: int = 0  # creation order, the tie-break for equal created_at
    machine_detection: str | None = None  # the create's MachineDetection
    amd_timeout: float = AMD_TIMEOUT_S  # the create's MachineDetectionTimeout (simulated s)
    message: str = ""  # the create's Twiml or Url: what a person hears
    redirects: list[tuple[float, str]] = field(default_factory=list)  # (at, Twiml or Url)

    def ring_at(self, speed: float) -> float:
        return self.created_at + self.plan.queue_s / speed

    def _pickup(self, speed: float) -> float:
        return self.created_at + (self.plan.queue_s + self.plan.ring_s) / speed

    def _natural_end(self, speed: float) -> float:
        talk = self.plan.talk_s if self.plan.outcome == "completed" else 0.0
        return self._pickup(speed) + talk / speed

    def answer_at(self, speed: float) -> float | None:
        """When it went in-progress, or None if it never does."""
        at = self._pickup(speed)
        canceled_first = self.canceled_at is not None and self.canceled_at < at
        return None if self.plan.outcome != "completed" or canceled_first else at

    def answered(self, speed: float) -> bool:
        return self.answer_at(speed) is not None

    def ended_at(self, speed: float) -> float:
        """When it reached a terminal status (a cancel is only recorded while the call is live)."""
        return self.canceled_at if self.canceled_at is not None else self._natural_end(speed)

    def answered_by_at(self, t: float, speed: float) -> str | None:
        """AnsweredBy at clock time t: None until answered and, with AMD, until detection
        ends (a call that ends first never gets one); then what Twilio reports for the mode."""
        answer = self.answer_at(speed)
        if answer is None or t < answer:
            return None
        if self.plan.answered_by is not None or self.machine_detection is None:
            return self.plan.answered_by
        value, after = self._detection()
        decided = answer + after / speed
        return value if decided <= min(t, self.ended_at(speed)) else None

    def _detection(self) -> tuple[str, float]:
        """(AnsweredBy, simulated seconds from the answer until it is known)."""
        plan, timeout = self.plan, self.amd_timeout
        if plan.party == "machine" and self.machine_detection == "DetectMessageEnd":
            value, after = f"machine_end_{plan.greeting_end}", plan.greeting_s
        elif plan.party == "machine":
            value, after = "machine_start", plan.detect_s
        elif plan.party in ("human", "fax"):
            value, after = plan.party, plan.detect_s
        else:
            value, after = "unknown", timeout
        return (value, after) if after < timeout else ("unknown", timeout)

    def status_at(self, t: float, speed: float) -> str:
        if self.canceled_at is not None and t >= self.canceled_at:
            return "completed" if self.answered(speed) else "canceled"
        if t < self.ring_at(speed):
            return "queued"
        if t < self._pickup(speed):
            return "ringing"
        if self.plan.outcome != "completed":
            return self.plan.outcome
        return "in-progress" if t < self._natural_end(speed) else "completed"


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received; status is -1 while unanswered (held or slow), 0 when dropped."""

    method: str
    path: str
    params: dict[str, list[str]]
    at: float
    status: int


class ApiError(Exception):
    """A Twilio-shaped error, raised from deep inside validation and turned into a reply."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Reply:
    status: int  # 0: close the connection without answering
    body: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


def default_plan(seed: int, to: str, nth: int) -> CallPlan:
    """Deterministic per (seed, to, nth), so a rerun of a campaign plays out the same."""
    rng = random.Random(f"{seed}:{to}:{nth}")
    x = rng.random()
    outcome = next(name for name, cap in OUTCOME_CAPS if x < cap)
    queue, ring, talk = rng.uniform(0.2, 1.0), rng.uniform(2.0, 10.0), rng.uniform(15.0, 90.0)
    y = rng.random()  # drawn after the others, so outcomes and times stay what they were
    party = next(name for name, cap in PARTY_CAPS if y < cap)
    greeting, end = rng.uniform(4.0, 12.0), rng.choice(("beep", "beep", "silence", "other"))
    return CallPlan(outcome, queue, ring, talk, party=party, detect_s=rng.uniform(1.5, 4.0),
                    greeting_s=greeting, greeting_end=end)  # fmt: skip


def _rfc2822(t: float | None) -> str | None:
    return None if t is None else format_datetime(datetime.fromtimestamp(t, UTC), usegmt=True)


def _formatted(number: str) -> str:
    """Twilio formats NANP numbers as (415) 867-5309 and leaves others alone."""
    if len(number) == 12 and number.startswith("+1") and number[1:].isdigit():
        return f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    return number


def _one(params: Params, name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def _int(params: Params, name: str, default: int, lo: int, hi: int, code: int) -> int:
    raw = _one(params, name)
    if raw is not None and (not re.fullmatch(r"-?\d+", raw) or not lo <= int(raw) <= hi):
        raise ApiError(400, code, f"Invalid {name} {raw!r}: expected an integer {lo}..{hi}")
    return default if raw is None else int(raw)


def _error(status: int, code: int, message: str, headers: dict[str, str] | None = None) -> _Reply:
    info = f"https://www.twilio.com/docs/errors/{code}"
    body = {"code": code, "message": message, "more_info": info, "status": status}
    return _Reply(status, body, headers)


def _time_filter(key: str, raw: str) -> Callable[[float | None], bool]:
    """`X>` is on-or-after, `X<` on-or-before; a YYYY-MM-DD compares by day, a full time exactly.

    A call without that time (not yet rung, not yet ended) never matches, as on Twilio, so a
    reconciler that filters on StartTime misses calls still queued here too.
    """
    try:
        bound = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, BAD_PARAM, f"Invalid {key} {raw!r}") from None
    bound, by_day, op = bound.replace(tzinfo=bound.tzinfo or UTC), len(raw) == 10, key[-1]

    def match(t: float | None) -> bool:
        if t is None:
            return False
        value: Any = datetime.fromtimestamp(t, UTC)
        value, b = (value.date(), bound.date()) if by_day else (value, bound)
        return value >= b if op == ">" else value <= b if op == "<" else value == b

    return match


def _check_create(params: Params, from_numbers: frozenset[str] | None) -> None:
    """Twilio's create-time rejections (HTTP 400, no call created)."""
    to, from_ = _one(params, "To"), _one(params, "From")
    if not to:
        raise ApiError(400, 21201, "No 'To' number is specified")
    if not from_:
        raise ApiError(400, 21213, "No 'From' number is specified")
    if to in MAGIC_TO:
        raise ApiError(400, *MAGIC_TO[to])
    if not E164.fullmatch(to):
        raise ApiError(400, 21211, f"Invalid 'To' Phone Number: {to}")
    if from_ == "+15005550001" or not E164.fullmatch(from_):
        raise ApiError(400, 21212, f"Invalid 'From' Phone Number: {from_}")
    if from_numbers is not None and from_ not in from_numbers:
        raise ApiError(400, 21210, f"'From' phone number not verified: {from_}")
    given = {k: v for k in ("Url", "Twiml", "ApplicationSid") if (v := _one(params, k))}
    if len(given) != 1:
        raise ApiError(400, 21205, "Url parameter is required (one of Url, Twiml, ApplicationSid)")
    if urlsplit(given.get("Url", "http:")).scheme not in ("http", "https"):
        raise ApiError(400, 21205, "Url is not a valid URL")
    if len(given.get("Twiml", "")) > 4000:
        raise ApiError(400, BAD_PARAM, "Twiml must be at most 4000 characters")
    if not re.fullmatch(r"AP[0-9a-fA-F]{32}", given.get("ApplicationSid", "AP" + "0" * 32)):
        raise ApiError(400, 21218, "Invalid ApplicationSid")
    _int(params, "Timeout", 60, 1, 600, 21208)
    if _one(params, "MachineDetection") not in (None, *AMD_MODES):
        raise ApiError(400, BAD_PARAM, "Invalid MachineDetection: Enable or DetectMessageEnd")
    _int(params, "MachineDetectionTimeout", AMD_TIMEOUT_S, 3, 59, BAD_PARAM)
    for key in ("Method", "FallbackMethod", "StatusCallbackMethod"):
        if _one(params, key) not in (None, "GET", "POST"):
            raise ApiError(400, 21209, f"Invalid {key}: must be GET or POST")


def _page_body(key: str, rows: list[dict[str, Any]], base: str, filters: dict[str, str],
               size: int, page: int, start: int, more: bool) -> dict[str, Any]:  # fmt: skip
    """A 2010-API list page. Next/previous URIs keep the filters and anchor a PageToken on a row."""

    def uri(**extra: Any) -> str:
        return f"{base}?{urlencode({**filters, 'PageSize': size, **extra})}"

    after = uri(Page=page + 1, PageToken=f"PA{rows[-1]['sid']}") if more and rows else None
    before = uri(Page=page - 1, PageToken=f"PB{rows[0]['sid']}") if page and rows else None
    return {key: rows, "end": start + max(len(rows) - 1, 0), "first_page_uri": uri(Page=0),
            "next_page_uri": after, "page": page, "page_size": size, "previous_page_uri": before,
            "start": start, "uri": uri(Page=page)}  # fmt: skip


def _number_json(acct: str, number: str, now: float) -> dict[str, Any]:
    """An IncomingPhoneNumber: every schema property, enums valid, the rest null."""
    sid = f"PN{random.Random(number).getrandbits(128):032x}"
    row: dict[str, Any] = dict.fromkeys(NUMBER_NULLS) | dict.fromkeys(NUMBER_POSTS, "POST")
    row.update(account_sid=acct, address_requirements="none", api_version="2010-04-01", beta=False,
               capabilities={"voice": True, "sms": True, "mms": True, "fax": False}, sid=sid,
               date_created=_rfc2822(now), date_updated=_rfc2822(now), phone_number=number,
               friendly_name=_formatted(number), origin="twilio", voice_receive_mode="voice",
               voice_method="POST", voice_caller_id_lookup=False, emergency_status="Inactive",
               emergency_address_status="unregistered", status="in-use", type="local",
               uri=f"{API}/Accounts/{acct}/IncomingPhoneNumbers/{sid}.json")  # fmt: skip
    return row


class _Handler(BaseHTTPRequestHandler):
    """Parses HTTP and writes replies; every decision lives in Simulator."""

    protocol_version = "HTTP/1.1"  # keep-alive: requests' session reuses connections
    disable_nagle_algorithm = True  # headers and body are two writes: avoid delayed-ACK stalls
    timeout = 120  # an idle keep-alive connection eventually frees its thread
    server: _Server

    def do_GET(self) -> None:
        """All methods land here; unknown routes get a Twilio-shaped 404 from Simulator."""
        sim, split = self.server.sim, urlsplit(self.path)
        params = parse_qs(split.query, keep_blank_values=True)
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode("utf-8", "replace"), keep_blank_values=True)
        for key, values in form.items():
            params.setdefault(key, []).extend(values)
        reply = _Reply(0)  # a stopped or down simulator answers nothing, even on keep-alive sockets
        if not sim._stopped.is_set() and not sim._down:
            auth = self.headers.get("Authorization")
            reply = sim._respond(self.command, split.path, params, auth)
        if reply.status == 0:
            self.close_connection = True
            return
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (reply.headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header comes from the simulator's clock, as Twilio's comes from Twilio's: a
        test can set the two clocks apart and watch the dialer measure the offset."""
        return formatdate(self.server.sim.clock() if timestamp is None else timestamp, usegmt=True)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the product's terminal UI owns stdout and stderr."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    sim: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client resets and timeouts are normal here (p_drop, ReadTimeout): no tracebacks."""


_ACCT = API + r"/Accounts/(?P<acct>[^/]+)"
_ROUTES = [  # (path, {method: Simulator handler})
    (re.compile(_ACCT + r"\.json"), {"GET": "_fetch_account"}),
    (re.compile(_ACCT + r"/Calls\.json"), {"GET": "_list_calls", "POST": "_create_call"}),
    (re.compile(_ACCT + r"/Calls/(?P<sid>[^/]+)\.json"), {"GET": "_fetch", "POST": "_update"}),
    (re.compile(_ACCT + r"/IncomingPhoneNumbers\.json"), {"GET": "_list_numbers"}),
]


class Simulator:
    """The server and its ledger. One lock (a Condition, so held creates can wait) guards it all."""

    def __init__(self, *, account_sid: str = DEFAULT_ACCOUNT_SID,
                 auth_token: str = DEFAULT_AUTH_TOKEN, clock: Callable[[], float] = time.time,
                 speed: float = 1.0, seed: int = 0,
                 plan: Callable[[str, int], CallPlan] | None = None, faults: Faults | None = None,
                 from_numbers: Iterable[str] | None = None, price_delay_s: float = 0.0,
                 price_per_minute: str = "0.01300") -> None:  # fmt: skip
        self.account_sid, self.auth_token = account_sid, auth_token
        # Twilio prices a call some time after it ends ("May not be immediately available"):
        # null until price_delay_s simulated seconds after the end, then per started minute.
        # 0 by default so that tests on real time never wait; `--simulate` runs use a delay.
        self.price_delay_s, self.price_per_minute = price_delay_s, Decimal(price_per_minute)
        self.clock, self.speed, self.faults = clock, speed, faults or Faults()
        self._plan = plan or (lambda to, nth: default_plan(seed, to, nth))
        self._numbers = None if from_numbers is None else list(dict.fromkeys(from_numbers))
        self._from_set = None if self._numbers is None else frozenset(self._numbers)
        self._lock = threading.Condition()
        self._calls: list[SimCall] = []
        self._by_sid: dict[str, SimCall] = {}
        self._by_to: dict[str, list[SimCall]] = {}
        self._open: list[SimCall] = []  # calls not yet seen ended: a live-status list scans these
        self._requests: list[RecordedRequest] = []
        self._hold, self._held = False, 0
        self._rng, self._rng_for = random.Random(), Faults()  # re-seeded when faults is replaced
        self._server: _Server | None = None
        self._port = 0
        self._stopped = threading.Event()
        self._down = False

    def start(self, port: int = 0) -> Simulator:
        """Serve on 127.0.0.1 in a daemon thread (port 0 picks a free port); returns self."""
        self._server = server = _Server(("127.0.0.1", port or self._port), _Handler)
        server.sim = self
        self._port = server.server_address[1]
        self._stopped.clear()
        serve = lambda: server.serve_forever(poll_interval=0.05)  # noqa: E731 - stop() within 50 ms
        threading.Thread(target=serve, name="twilio-simulator", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop listening, release held creates, and answer nothing more on open sockets."""
        self._stopped.set()
        self.release_creates()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def go_down(self) -> None:
        """Twilio unreachable: new connections are refused and open keep-alive connections are
        closed unanswered; nothing that arrives is recorded or processed."""
        with self._lock:
            self._down = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def come_up(self) -> None:
        """Reachable again, on the same port, with the same ledger."""
        with self._lock:
            self._down = False
        self.start(self._port)

    def serve_forever(self, port: int = 0) -> None:
        """Foreground serving for `dialer simulator` (reuses a started server); Ctrl-C returns."""
        if self._server is None or self._stopped.is_set():
            self.start(port)
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("Simulator not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # Referee API: thread-safe snapshots.
    def calls(self) -> list[SimCall]:
        with self._lock:
            return list(self._calls)

    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def creates(self) -> list[RecordedRequest]:
        """Every POST to Calls.json that reached the server, whatever it was answered."""
        return [r for r in self.requests() if r.method == "POST" and r.path.endswith("/Calls.json")]

    def live_at(self, t: float) -> int:
        return sum(1 for c in self.calls() if c.created_at <= t < c.ended_at(self.speed))

    def max_live(self) -> int:
        """Peak simultaneous calls over the ledger (created inclusive, ended exclusive)."""
        spans = [(c.created_at, c.ended_at(self.speed)) for c in self.calls()]
        peak = live = 0
        for _, delta in sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans]):
            live += delta  # at equal times -1 sorts first: an ending frees the slot
            peak = max(peak, live)
        return peak

    def hold_creates(self) -> None:
        """From now on creates are processed but their responses wait for release_creates()."""
        with self._lock:
            self._hold = True

    def release_creates(self) -> None:
        with self._lock:
            self._hold = False
            self._lock.notify_all()

    def held(self) -> int:
        with self._lock:
            return self._held

    def wait_held(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least n create responses are held, so tests need not sleep and hope."""
        with self._lock:
            return self._lock.wait_for(lambda: self._held >= n, timeout)

    # Request handling, on the handler threads.
    def _roll(self, p: float) -> bool:
        if p <= 0:
            return False
        with self._lock:
            if self._rng_for is not self.faults:  # a new Faults object restarts its seeded sequence
                self._rng, self._rng_for = random.Random(self.faults.seed), self.faults
            return p >= 1 or self._rng.random() < p

    def _respond(self, method: str, path: str, params: Params, auth: str | None) -> _Reply:
        """Record the request, decide the reply, apply the slow fault."""
        with self._lock:
            slot = len(self._requests)
            self._requests.append(RecordedRequest(method, path, params, self.clock(), -1))
        try:
            reply = self._route(method, path, params, auth)
        except ApiError as e:
            reply = _error(e.status, e.code, e.message)
        except Exception as e:  # a simulator bug must look like a Twilio 500, not a dead socket
            reply = _error(500, 20500, f"Internal Server Error ({type(e).__name__}: {e})")
        if self._roll(self.faults.p_slow):
            time.sleep(self.faults.slow_s)
        with self._lock:
            self._requests[slot] = replace(self._requests[slot], status=reply.status)
        return reply

    def _route(self, method: str, path: str, params: Params, auth: str | None) -> _Reply:
        expected = base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if (auth or "").strip() != f"Basic {expected}":
            return _error(401, 20003, "Authenticate", {"WWW-Authenticate": 'Basic realm="Twilio"'})
        wait = self.faults.retry_after_s
        after = {} if wait is None else {"Retry-After": f"{wait:g}"}
        if self._roll(self.faults.p_429):
            return _error(429, 20429, "Too Many Requests", after)
        if self._roll(self.faults.p_500):
            return _error(500, 20500, "Internal Server Error")
        if self._roll(self.faults.p_503):
            return _error(503, 20503, "Service Unavailable", after)
        for pattern, handlers in _ROUTES:
            m = pattern.fullmatch(path)
            if m and method in handlers and m["acct"] == self.account_sid:
                return getattr(self, handlers[method])(params, self.clock(), **m.groupdict())
        return _error(404, 20404, f"The requested resource {path} was not found")

    def _create_call(self, params: Params, now: float, acct: str) -> _Reply:
        _check_create(params, self._from_set)
        to, from_ = _one(params, "To") or "", _one(params, "From") or ""
        with self._lock:
            plan = self._plan(to, len(self._by_to.get(to, ())))
            # Random, not seeded: a resumed simulated run starts a new simulator, and a SID must
            # never name two calls in one database (reports and reconciliation key on it).
            while (sid := f"CA{secrets.token_hex(16)}") in self._by_sid:
                pass
            call = SimCall(sid, to, from_, now, plan, seq=len(self._calls),
                           machine_detection=_one(params, "MachineDetection"),
                           amd_timeout=_int(params, "MachineDetectionTimeout", AMD_TIMEOUT_S, 3,
                                            59, BAD_PARAM),
                           message=_one(params, "Twiml") or _one(params, "Url") or "")  # fmt: skip
            self._calls.append(call)
            self._by_sid[sid] = call
            self._by_to.setdefault(to, []).append(call)
            self._open.append(call)
            if self._hold:
                self._held += 1
                self._lock.notify_all()
                self._lock.wait_for(lambda: not self._hold)
                self._held -= 1
        if self._roll(self.faults.p_drop):
            return _Reply(0)
        if self._roll(self.faults.p_500_after_create):
            return _error(500, 20500, "Internal Server Error")
        return _Reply(201, self._call_json(call, self.clock()))

    def _find(self, sid: str) -> SimCall:
        with self._lock:
            call = self._by_sid.get(sid)
        if call is None:
            raise ApiError(404, 20404, f"The requested resource /Calls/{sid}.json was not found")
        return call

    def _fetch(self, params: Params, now: float, acct: str, sid: str) -> _Reply:
        return _Reply(200, self._call_json(self._find(sid), now))

    def _update(self, params: Params, now: float, acct: str, sid: str) -> _Reply:
        """Status=canceled ends queued/ringing calls only; Status=completed also live ones.
        Twiml or Url redirects a live call (recorded, for the referee); one that has ended
        gets 21220, as on Twilio."""
        call, status = self._find(sid), _one(params, "Status")
        if status not in (None, *ENDABLE):
            raise ApiError(400, BAD_PARAM, f"Invalid Status {status!r}: canceled or completed")
        message = self._redirect_to(params)
        if message is not None and self._roll(self.faults.p_429_redirect):
            wait = self.faults.retry_after_s
            return _error(429, 20429, "Too Many Requests", {"Retry-After": f"{wait or 1:g}"})
        with self._lock:
            if message is not None and not status:
                if call.status_at(now, self.speed) not in LIVE:
                    raise ApiError(
                        400, NOT_IN_PROGRESS, "Call is not in-progress. Cannot redirect."
                    )
                call.redirects.append((now, message))
            if status and call.status_at(now, self.speed) in ENDABLE[status]:
                call.canceled_at = now
        if message is not None and self._roll(self.faults.p_500_after_redirect):
            return _error(500, 20500, "Internal Server Error")
        return _Reply(200, self._call_json(call, now))

    @staticmethod
    def _redirect_to(params: Params) -> str | None:
        """The Twiml or Url of an update (one of them at most), checked as on a create."""
        given = {k: v for k in ("Url", "Twiml") if (v := _one(params, k))}
        if len(given) > 1:
            raise ApiError(400, BAD_PARAM, "Url and Twiml are both set; send one")
        if urlsplit(given.get("Url", "http:")).scheme not in ("http", "https"):
            raise ApiError(400, 21205, "Url is not a valid URL")
        if len(given.get("Twiml", "")) > 4000:
            raise ApiError(400, BAD_PARAM, "Twiml must be at most 4000 characters")
        return next(iter(given.values()), None)

    def _list_calls(self, params: Params, now: float, acct: str) -> _Reply:
        """Newest first; a To filter uses the index, a live Status the open calls, anything
        else scans every call (a dialer polling by status must not make the simulator slow)."""
        size = _int(params, "PageSize", 50, 1, 1000, BAD_PARAM)
        page = _int(params, "Page", 0, 0, 10**9, BAD_PARAM)
        want = {k: v for k in FILTERS.split() if (v := _one(params, k))}
        if want.get("Status", "queued") not in STATUSES:
            raise ApiError(400, BAD_PARAM, f"Invalid Status {want['Status']!r}")
        times = [(k, _time_filter(k, v)) for k, v in want.items() if "Time" in k]
        with self._lock:
            if "To" in want:
                pool = list(self._by_to.get(want["To"], ()))
            elif want.get("Status") in LIVE:
                self._open = [c for c in self._open if c.ended_at(self.speed) > now]
                pool = list(self._open)
            else:
                pool = list(self._calls)
        lag, speed = self.faults.list_lag_s, self.speed
        hits = [
            c
            for c in reversed(pool)
            if "ParentCallSid" not in want  # simulated calls have no parent
            and want.get("From", c.from_) == c.from_
            and (now - c.created_at) * speed >= lag
            and want.get("Status", "") in ("", c.status_at(now, speed))
            and all(match(self._time_of(c, k, now)) for k, match in times)
        ]
        hits.sort(key=lambda c: c.created_at, reverse=True)  # stable: ties stay newest-first
        items, more, start = self._page(hits, size, page, _one(params, "PageToken"))
        rows = [self._call_json(c, now) for c in items]
        base = f"{API}/Accounts/{acct}/Calls.json"
        return _Reply(200, _page_body("calls", rows, base, want, size, page, start, more))

    def _time_of(self, c: SimCall, key: str, now: float) -> float | None:
        """When the call started ringing (StartTime) or ended (EndTime); None if not (yet)."""
        end, ring = c.ended_at(self.speed), c.ring_at(self.speed)
        at = end if key.startswith("End") else ring if ring < end else None
        return at if at is not None and at <= now else None

    def _page(self, hits: list[SimCall], size: int, page: int, token: str | None
              ) -> tuple[list[SimCall], bool, int]:  # fmt: skip
        """(rows, more after them, start). PA<sid> is the page after that call, PB<sid> the one
        before it, so calls created between page fetches neither repeat nor vanish."""
        if token is None:
            return hits[page * size : (page + 1) * size], len(hits) > (page + 1) * size, page * size
        with self._lock:
            ref = self._by_sid.get(token[2:]) if token[:2] in ("PA", "PB") else None
        if ref is None:
            raise ApiError(400, BAD_PARAM, f"Invalid PageToken {token!r}")
        key = (ref.created_at, ref.seq)
        if token.startswith("PA"):
            rest = [c for c in hits if (c.created_at, c.seq) < key]
            return rest[:size], len(rest) > size, len(hits) - len(rest)
        before = [c for c in hits if (c.created_at, c.seq) > key]
        return before[-size:], True, max(0, len(before) - size)

    def _call_json(self, c: SimCall, now: float) -> dict[str, Any]:
        """Every property of api.v2010.account.call, null where a real call has nothing yet."""
        speed, status = self.speed, c.status_at(now, self.speed)
        ring, answer, end = c.ring_at(speed), c.answer_at(speed), c.ended_at(speed)
        started = ring if ring <= now and ring < end else None
        ended = end if status not in LIVE else None
        answered = answer if answer is not None and answer <= now else None
        talk = None if answered is None or ended is None else round((end - answered) * speed)
        updated = max(t for t in (c.created_at, started, answered, ended) if t is not None)
        uri = f"{API}/Accounts/{self.account_sid}/Calls/{c.sid}"
        duration = None if talk is None else str(talk)  # talk time, in simulated seconds
        return {
            "sid": c.sid, "date_created": _rfc2822(c.created_at), "date_updated": _rfc2822(updated),
            "parent_call_sid": None, "account_sid": self.account_sid, "to": c.to,
            "to_formatted": _formatted(c.to), "from": c.from_, "phone_number_sid": None,
            "from_formatted": _formatted(c.from_), "status": status,
            "start_time": _rfc2822(started),
            "end_time": _rfc2822(ended), "duration": duration, "price_unit": "USD",
            "price": self._price(talk, ended, now),
            "direction": "outbound-api", "answered_by": c.answered_by_at(now, speed),
            "api_version": "2010-04-01", "forwarded_from": None, "group_sid": None,
            "caller_name": None, "queue_time": "0", "trunk_sid": None, "uri": f"{uri}.json",
            "subresource_uris": {k: f"{uri}/{k.title()}.json" for k in SUBRESOURCES},
        }  # fmt: skip

    def _price(self, talk: int | None, ended: float | None, now: float) -> str | None:
        """A connected call's charge, negative as Twilio writes it, once price_delay_s simulated
        seconds have passed since its end; calls that never connected are not charged."""
        if talk is None or ended is None or (now - ended) * self.speed < self.price_delay_s:
            return None
        minutes = max(math.ceil(talk / 60), 1)
        return str(-(self.price_per_minute * minutes).quantize(Decimal("0.00001")))

    def _fetch_account(self, params: Params, now: float, acct: str) -> _Reply:
        uri = f"{API}/Accounts/{acct}"
        subs = {"calls": f"{uri}/Calls.json"}
        subs["incoming_phone_numbers"] = f"{uri}/IncomingPhoneNumbers.json"
        return _Reply(200, {
            "auth_token": None, "date_created": _rfc2822(now), "date_updated": _rfc2822(now),
            "friendly_name": "Simulated account", "owner_account_sid": acct, "sid": acct,
            "status": "active", "subresource_uris": subs, "type": "Full", "uri": f"{uri}.json",
        })  # fmt: skip

    def _list_numbers(self, params: Params, now: float, acct: str) -> _Reply:
        """The From numbers the account owns; without from_numbers, any number asked about."""
        size = _int(params, "PageSize", 50, 1, 1000, 400)
        page = _int(params, "Page", 0, 0, 10**9, 400)
        wanted = _one(params, "PhoneNumber")
        numbers = self._numbers if self._numbers is not None else [wanted] if wanted else []
        rows = [_number_json(acct, n, now) for n in numbers if wanted in (None, n)]
        start, base = page * size, f"{API}/Accounts/{acct}/IncomingPhoneNumbers.json"
        filters = {"PhoneNumber": wanted} if wanted else {}
        more, rows = len(rows) > start + size, rows[start : start + size]
        body = _page_body("incoming_phone_numbers", rows, base, filters, size, page, start, more)
        return _Reply(200, body)
