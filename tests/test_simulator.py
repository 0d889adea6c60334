"""The Twilio simulator, driven through the real `twilio` package (raw urllib only where twilio
cannot express the request, e.g. a missing To or a deliberately invalid PageSize).

The simulator is the suite's referee, so it is refereed in turn: when each test ends, every request
it recorded is checked against Twilio's own spec (tests/contract.py), and so is every response the
client received. A test that sends a spec-violating request on purpose declares it, and then the
contract must flag it too. Time is a fake clock advanced by hand; real threads are awaited on
conditions with deadlines, never slept on.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from dialer_cli.simulator import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    CallPlan,
    Faults,
    Simulator,
    default_plan,
)
from tests.contract import SPEC, validate_request, validate_response

T0 = 1_700_000_000.0
TO, TO2, TO3, TO4 = "+14155550100", "+14155550101", "+14155550102", "+14155550103"
FROM = "+14155550199"
URL = "https://example.com/twiml"
ACCOUNT = f"/2010-04-01/Accounts/{DEFAULT_ACCOUNT_SID}"
CALLS = f"{ACCOUNT}/Calls.json"
OTHER_ACCOUNT = "AC" + "f" * 32
# Rings at +1, is answered at +5, ends at +15.
STANDARD = CallPlan("completed", queue_s=1, ring_s=4, talk_s=10)
CALL_PROPERTIES = set(SPEC["components"]["schemas"]["api.v2010.account.call"]["properties"])


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingHttpClient(TwilioHttpClient):
    """Keeps every exchange (status None when it failed) for the end-of-test contract check."""

    def __init__(self, seen: list[tuple[str, str, int | None, str, Any]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen = seen

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        try:
            response = super().request(method, url, *args, **kwargs)
        except Exception:
            self.seen.append((method, urlsplit(url).path, None, "", None))
            raise
        self.seen.append(
            (method, urlsplit(url).path, response.status_code, response.text, response.headers)
        )
        return response


class Harness:
    """A simulator on a fake clock, twilio clients pointed at it, and the contract check."""

    def __init__(self, **sim_kwargs: Any) -> None:
        self.clock = FakeClock()
        sim_kwargs.setdefault("plan", lambda to, nth: STANDARD)
        self.sim = Simulator(clock=self.clock, **sim_kwargs).start()
        self.seen: list[tuple[str, str, int | None, str, Any]] = []
        self.deliberately_bad: list[tuple[str, str, dict[str, list[str]]]] = []
        self.client = self.make_client()

    def make_client(self, token: str = DEFAULT_AUTH_TOKEN, timeout: float = 5) -> Client:
        http = RecordingHttpClient(self.seen, timeout=timeout)
        client = Client(DEFAULT_ACCOUNT_SID, token, http_client=http)
        client.api.base_url = self.sim.url
        return client

    def raw(self, method: str, path: str, params: dict[str, Any] | None = None, *, bad: bool = False
            ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """A request the twilio package would not send; `bad` declares it violates the spec."""
        data = urlencode(params or {}, doseq=True)
        url = self.sim.url + path + (f"?{data}" if method == "GET" and data else "")
        body = data.encode() if method != "GET" else None
        request = urllib.request.Request(url, data=body, method=method)
        creds = base64.b64encode(f"{DEFAULT_ACCOUNT_SID}:{DEFAULT_AUTH_TOKEN}".encode()).decode()
        request.add_header("Authorization", f"Basic {creds}")
        if bad:
            parsed = {
                k: [str(x) for x in (v if isinstance(v, list) else [v])]
                for k, v in (params or {}).items()
            }
            self.deliberately_bad.append((method, path, parsed))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=5) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        self.seen.append((method, path, status, text, None))
        return status, json.loads(text)

    def last_body(self) -> dict[str, Any]:
        return json.loads(self.seen[-1][3])

    def check_contract(self) -> None:
        recorded = self.sim.requests()
        assert len(recorded) == len(self.seen), "every request the client sent is in the ledger"
        for r in recorded:
            violations = validate_request(r.method, r.path, r.params)
            if (r.method, r.path, r.params) in self.deliberately_bad:
                assert violations, f"contract accepted a deliberately bad request: {r}"
            else:
                assert violations == [], f"{r.method} {r.path} {r.params}"
        for method, path, status, text, _ in self.seen:
            if status is not None:
                problems = validate_response(method, path, status, json.loads(text))
                assert problems == [], f"{method} {path} {status}: {problems}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """TWILIO_REGION/EDGE mangle loopback URLs, and proxies apply to loopback (twilio notes 1.1)."""
    for name in ("TWILIO_REGION", "TWILIO_EDGE", "TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**sim_kwargs: Any) -> Harness:
        made.append(Harness(**sim_kwargs))
        return made[-1]

    yield make
    for h in made:
        h.sim.stop()
        h.check_contract()


def plans(
    default: CallPlan, by_number: dict[str, CallPlan] | None = None
) -> Callable[..., CallPlan]:
    """A plan callable: `default` for every call, except numbers listed in `by_number`."""
    return lambda to, nth: (by_number or {}).get(to, default)


def at(seconds: float) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


# ---- create / fetch / lifecycle ------------------------------------------------------------------


def test_create_returns_a_queued_call_with_every_property_of_the_spec(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    call = h.client.calls.create(
        to=TO, from_=FROM, url=URL, status_callback_event=["initiated", "answered"]
    )

    assert h.seen[-1][2] == 201
    body = h.last_body()
    assert set(body) == CALL_PROPERTIES
    assert (call.status, call.direction, call.api_version) == (
        "queued",
        "outbound-api",
        "2010-04-01",
    )
    assert (call.to, call._from, call.to_formatted) == (TO, FROM, "(415) 555-0100")
    assert (
        call.account_sid == DEFAULT_ACCOUNT_SID
        and call.sid.startswith("CA")
        and len(call.sid) == 34
    )
    assert call.date_created == at(0) and call.start_time is None and call.end_time is None
    assert body["duration"] is None and body["price"] is None
    assert body["uri"] == f"{ACCOUNT}/Calls/{call.sid}.json"
    [ledger] = h.sim.calls()
    assert (ledger.sid, ledger.to, ledger.from_, ledger.created_at) == (call.sid, TO, FROM, T0)
    [create] = h.sim.creates()
    assert create.status == 201 and create.at == T0
    events = create.params["StatusCallbackEvent"]
    assert events == ["initiated", "answered"]  # repeated keys, as sent


def test_a_call_walks_queued_ringing_in_progress_completed(harness: Callable[..., Harness]) -> None:
    h = harness(plan=plans(STANDARD, {TO: CallPlan("completed", 1, 4, 10, answered_by="human")}))
    sid = h.client.calls.create(to=TO, from_=FROM, url=URL).sid
    seen = []
    for t in (0.5, 1, 4.9, 5, 14.9, 15, 100):
        h.clock.now = T0 + t
        call = h.client.calls(sid).fetch()
        seen.append((t, call.status, call.answered_by))
    assert seen == [
        (0.5, "queued", None),
        (1, "ringing", None),
        (4.9, "ringing", None),
        (5, "in-progress", "human"),
        (14.9, "in-progress", "human"),
        (15, "completed", "human"),
        (100, "completed", "human"),
    ]
    assert (call.start_time, call.end_time, call.duration) == (at(1), at(15), "10")
    assert call.date_updated == at(15)
    ledger = h.sim.calls()[0]
    assert ledger.answered(1.0) and ledger.ended_at(1.0) == T0 + 15


@pytest.mark.parametrize("outcome", ["busy", "no-answer", "failed"])
def test_unanswered_calls_end_after_ringing(harness: Callable[..., Harness], outcome: str) -> None:
    h = harness(plan=plans(CallPlan(outcome, queue_s=1, ring_s=4)))
    sid = h.client.calls.create(to=TO, from_=FROM, url=URL).sid
    h.clock.now = T0 + 4.9
    assert h.client.calls(sid).fetch().status == "ringing"
    h.clock.now = T0 + 5
    call = h.client.calls(sid).fetch()
    assert (call.status, call.start_time, call.end_time, call.duration) == (
        outcome,
        at(1),
        at(5),
        None,
    )
    assert not h.sim.calls()[0].answered(1.0)


def test_speed_divides_the_plan_by_the_clock(harness: Callable[..., Harness]) -> None:
    h = harness(speed=60, plan=plans(CallPlan("completed", queue_s=6, ring_s=54, talk_s=60)))
    sid = h.client.calls.create(to=TO, from_=FROM, url=URL).sid
    statuses = []
    for t in (0.05, 0.5, 1.5, 2.5):
        h.clock.now = T0 + t
        statuses.append(h.client.calls(sid).fetch().status)
    assert statuses == ["queued", "ringing", "in-progress", "completed"]
    assert h.client.calls(sid).fetch().duration == "60"  # simulated seconds
    assert h.sim.calls()[0].ended_at(60) == pytest.approx(T0 + 2)


def test_update_cancels_unanswered_calls_and_completes_live_ones(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    queued, ringing, talking, done = (
        h.client.calls.create(to=n, from_=FROM, url=URL).sid for n in (TO, TO2, TO3, TO4)
    )
    h.clock.now = T0 + 0.5
    assert h.client.calls(queued).update(status="canceled").status == "canceled"
    h.clock.now = T0 + 2
    call = h.client.calls(ringing).update(status="completed")  # not answered yet: canceled
    assert (call.status, call.end_time, call.duration) == ("canceled", at(2), None)
    h.clock.now = T0 + 7
    assert h.client.calls(talking).update(status="canceled").status == "in-progress"  # too late
    call = h.client.calls(talking).update(status="completed")
    assert (call.status, call.end_time, call.duration) == ("completed", at(7), "2")
    h.clock.now = T0 + 20
    assert h.client.calls(done).update(status="canceled").status == "completed"
    assert h.client.calls(queued).fetch().status == "canceled"  # and it stays so
    ends = {c.sid: c.canceled_at for c in h.sim.calls()}
    assert ends == {queued: T0 + 0.5, ringing: T0 + 2, talking: T0 + 7, done: None}


def test_max_live_and_live_at_follow_the_simulated_timeline(
    harness: Callable[..., Harness],
) -> None:
    short = CallPlan("completed", queue_s=1, ring_s=4, talk_s=5)  # ends at +10
    h = harness(plan=plans(short, {TO2: CallPlan("busy", queue_s=1, ring_s=4)}))  # ends +5
    h.client.calls.create(to=TO, from_=FROM, url=URL)
    h.client.calls.create(to=TO2, from_=FROM, url=URL)
    h.clock.advance(5)  # TO2 ends exactly now: end is exclusive
    h.client.calls.create(to=TO3, from_=FROM, url=URL)
    h.clock.advance(1)
    late = h.client.calls.create(to=TO4, from_=FROM, url=URL).sid
    h.clock.advance(1)
    h.client.calls(late).update(status="canceled")
    assert [h.sim.live_at(T0 + t) for t in (0, 5, 6, 7, 10, 16)] == [2, 2, 3, 2, 1, 0]
    assert h.sim.max_live() == 3


# ---- errors --------------------------------------------------------------------------------------


def test_wrong_credentials_get_401_20003_and_create_nothing(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    with pytest.raises(TwilioRestException) as e:
        h.make_client(token="wrong").calls.create(to=TO, from_=FROM, url=URL)
    assert (e.value.status, e.value.code) == (401, 20003)
    assert h.sim.calls() == [] and [r.status for r in h.sim.requests()] == [401]


def test_another_accounts_path_is_404(harness: Callable[..., Harness]) -> None:
    h = harness()
    with pytest.raises(TwilioRestException) as e:
        h.client.api.v2010.accounts(OTHER_ACCOUNT).calls.create(to=TO, from_=FROM, url=URL)
    assert (e.value.status, e.value.code) == (404, 20404)
    with pytest.raises(TwilioRestException) as e:
        h.client.calls("CA" + "0" * 32).fetch()
    assert (e.value.status, e.value.code) == (404, 20404)
    assert h.sim.calls() == []


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": "+15005550001"}, 21217),
        ({"to": "+15005550002"}, 21214),
        ({"to": "+15005550003"}, 21215),
        ({"to": "+15005550004"}, 21216),
        ({"from_": "+15005550001"}, 21212),
        ({"from_": "+14155550999"}, 21210),  # not among from_numbers
        ({"to": "4155550100"}, 21211),  # not E.164 (the spec's `endpoint` format allows it)
        ({"url": None}, 21205),
        ({"twiml": "<Response/>"}, 21205),  # Url and Twiml together
        ({"twiml": "<Response>" + "x" * 4000 + "</Response>", "url": None}, 21200),
        ({"timeout": 0}, 21208),
        ({"timeout": 601}, 21208),
    ],
)
def test_create_rejections(
    harness: Callable[..., Harness], kwargs: dict[str, Any], code: int
) -> None:
    h = harness(from_numbers=[FROM, "+15005550001"])
    args: dict[str, Any] = {"to": TO, "from_": FROM, "url": URL, **kwargs}
    with pytest.raises(TwilioRestException) as e:
        h.client.calls.create(**args)
    assert (e.value.status, e.value.code) == (400, code)
    assert h.sim.calls() == [] and [r.status for r in h.sim.creates()] == [400]


def test_requests_outside_the_spec_are_refused_by_simulator_and_contract(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    sid = h.client.calls.create(to=TO, from_=FROM, url=URL).sid
    cases = [
        ("POST", CALLS, {"From": FROM, "Url": URL}, 400, 21201),
        ("POST", CALLS, {"To": TO, "Url": URL}, 400, 21213),
        ("GET", CALLS, {"PageSize": 5000}, 400, 21200),
        ("GET", CALLS, {"Status": "ringing-ish"}, 400, 21200),
        ("POST", f"{ACCOUNT}/Calls/{sid}.json", {"Status": "busy"}, 400, 21200),
        ("GET", f"{ACCOUNT}/Calls/XYZ.json", {}, 404, 20404),
        ("GET", f"{ACCOUNT}/Messages.json", {}, 404, 20404),
    ]
    for method, path, params, status, code in cases:
        assert h.raw(method, path, params, bad=True)[0] == status
        body = h.last_body()
        assert (body["status"], body["code"]) == (status, code), (method, path, params)
        assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"
    assert len(h.sim.calls()) == 1


# ---- list ----------------------------------------------------------------------------------------


def test_list_is_newest_first_and_pages_through_everything(harness: Callable[..., Harness]) -> None:
    h = harness()
    sids = []
    for _ in range(5):
        sids.append(h.client.calls.create(to=TO, from_=FROM, url=URL).sid)
        h.clock.advance(0.5)
    sids.append(h.client.calls.create(to=TO, from_=FROM, url=URL).sid)
    h.client.calls.create(to=TO2, from_=FROM, url=URL)

    listed = [c.sid for c in h.client.calls.list(to=TO, page_size=2)]
    assert listed == sids[::-1]
    lists = [r for r in h.sim.requests() if r.method == "GET"]
    assert len(lists) == 3 and lists[1].params["PageToken"] == [f"PA{sids[4]}"]
    assert len(h.client.calls.list(page_size=1000)) == 7
    assert len(h.client.calls.list(from_=FROM, to=TO2)) == 1
    h.clock.now = T0 + 2.4  # created at +0, +0.5 ... +2.5: those before +1.4 are ringing
    assert [c.sid for c in h.client.calls.list(to=TO, status="ringing")] == sids[2::-1]


def test_calls_created_at_the_same_instant_list_in_reverse_creation_order(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    sids = [h.client.calls.create(to=TO, from_=FROM, url=URL).sid for _ in range(3)]
    assert [c.sid for c in h.client.calls.list(to=TO, page_size=2)] == sids[::-1]


def test_page_tokens_hold_steady_while_new_calls_arrive(harness: Callable[..., Harness]) -> None:
    h = harness()
    sids = []
    for _ in range(4):
        sids.append(h.client.calls.create(to=TO, from_=FROM, url=URL).sid)
        h.clock.advance(1)
    first = h.client.calls.page(to=TO, page_size=2)
    h.client.calls.create(to=TO, from_=FROM, url=URL)  # would shift an offset-based second page
    second = first.next_page()
    assert [c.sid for c in first] + [c.sid for c in second] == sids[::-1]
    assert second.next_page() is None
    assert [c.sid for c in second.previous_page()] == sids[:1:-1]


def test_start_time_filters_miss_calls_that_have_not_rung(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.client.calls.create(to=TO, from_=FROM, url=URL)
    day = at(0).strftime("%Y-%m-%d")  # a day compares by date, a full time exactly
    assert h.client.calls.list(to=TO, start_time_after=day) == []  # queued: start_time empty
    h.clock.advance(1)
    assert len(h.client.calls.list(to=TO, start_time_after=day, start_time_before=day)) == 1
    assert len(h.client.calls.list(to=TO, start_time_after=at(1))) == 1
    assert h.client.calls.list(to=TO, start_time_after=at(2)) == []
    assert h.client.calls.list(to=TO, end_time=day) == []  # still live
    h.clock.advance(20)
    assert len(h.client.calls.list(to=TO, end_time=day)) == 1


def test_list_lag_hides_a_new_call_until_the_clock_passes_it(
    harness: Callable[..., Harness],
) -> None:
    h = harness(faults=Faults(list_lag_s=5))
    sid = h.client.calls.create(to=TO, from_=FROM, url=URL).sid
    assert h.client.calls.list(to=TO) == []
    assert h.client.calls(sid).fetch().sid == sid  # fetch is not lagged
    h.clock.advance(4.9)
    assert h.client.calls.list(to=TO) == []
    h.clock.advance(0.1)
    assert [c.sid for c in h.client.calls.list(to=TO)] == [sid]


# ---- faults --------------------------------------------------------------------------------------


def test_429_is_rate_limiting_with_retry_after_and_nothing_processed(
    harness: Callable[..., Harness],
) -> None:
    h = harness(faults=Faults(p_429=1))
    with pytest.raises(TwilioRestException) as e:
        h.client.calls.create(to=TO, from_=FROM, url=URL)
    assert (e.value.status, e.value.code) == (429, 20429)
    assert h.seen[-1][4]["Retry-After"] == "1"
    assert h.sim.calls() == [] and [r.status for r in h.sim.creates()] == [429]
    h.sim.faults.p_429 = 0  # faults are switched at run time
    h.client.calls.create(to=TO, from_=FROM, url=URL)
    assert len(h.sim.calls()) == 1


def test_500_before_processing_creates_nothing(harness: Callable[..., Harness]) -> None:
    h = harness(faults=Faults(p_500=1))
    with pytest.raises(TwilioRestException) as e:
        h.client.calls.create(to=TO, from_=FROM, url=URL)
    assert (e.value.status, e.value.code) == (500, 20500)
    assert h.sim.calls() == []


def test_500_after_create_leaves_a_call_the_client_never_heard_of(
    harness: Callable[..., Harness],
) -> None:
    h = harness(faults=Faults(p_500_after_create=1))
    with pytest.raises(TwilioRestException) as e:
        h.client.calls.create(to=TO, from_=FROM, url=URL)
    assert (e.value.status, e.value.code) == (500, 20500)
    assert [c.to for c in h.sim.calls()] == [TO] and [r.status for r in h.sim.creates()] == [500]


def test_a_dropped_create_made_the_call_and_the_server_survives(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    client = h.make_client(timeout=2)
    client.calls.list(to=TO)  # warm a keep-alive connection, so the drop hits a reused socket
    h.sim.faults = Faults(p_drop=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.calls.create(to=TO, from_=FROM, url=URL)
    assert [c.to for c in h.sim.calls()] == [TO] and [r.status for r in h.sim.creates()] == [0]
    h.sim.faults = Faults()
    assert [c.to for c in client.calls.list(to=TO)] == [TO]


def test_slow_answers_take_real_time(harness: Callable[..., Harness]) -> None:
    h = harness(faults=Faults(p_slow=1, slow_s=0.2))
    started = time.monotonic()
    h.client.calls.list(to=TO)
    assert time.monotonic() - started >= 0.2


def test_held_creates_are_processed_but_answered_only_on_release(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    h.sim.hold_creates()
    result: list[str] = []
    worker = threading.Thread(
        target=lambda: result.append(h.client.calls.create(to=TO, from_=FROM, url=URL).sid)
    )
    worker.start()
    assert h.sim.wait_held(1, timeout=5)
    assert h.sim.held() == 1 and len(h.sim.calls()) == 1 and result == []
    assert [r.status for r in h.sim.creates()] == [-1]  # still unanswered
    h.sim.release_creates()
    worker.join(timeout=5)
    assert result == [h.sim.calls()[0].sid] and h.sim.held() == 0
    assert [r.status for r in h.sim.creates()] == [201]


def test_fault_draws_follow_the_seed(harness: Callable[..., Harness]) -> None:
    def outcomes(seed: int) -> list[int]:
        h = harness(faults=Faults(p_429=0.5, seed=seed))
        for _ in range(12):
            try:
                h.client.calls.list(to=TO)
            except TwilioException:  # a 429 page; the ledger says which
                pass
        return [r.status for r in h.sim.requests()]

    first = outcomes(3)
    assert first == outcomes(3) and {200, 429} == set(first)


# ---- account, numbers, transport -----------------------------------------------------------------


def test_account_fetch_and_incoming_numbers_for_doctor(harness: Callable[..., Harness]) -> None:
    h = harness(from_numbers=[FROM])
    account = h.client.api.v2010.accounts(DEFAULT_ACCOUNT_SID).fetch()
    assert (account.sid, account.status, account.type) == (DEFAULT_ACCOUNT_SID, "active", "Full")
    [number] = h.client.incoming_phone_numbers.list(phone_number=FROM)
    assert number.phone_number == FROM and number.capabilities["voice"] is True
    assert h.client.incoming_phone_numbers.list(phone_number=TO) == []
    anything = harness()  # without from_numbers every number is ours
    assert len(anything.client.incoming_phone_numbers.list(phone_number=TO)) == 1


def test_keep_alive_with_content_length_on_every_response(harness: Callable[..., Harness]) -> None:
    h = harness()
    h.client.calls.create(to=TO, from_=FROM, url=URL)
    conn = http.client.HTTPConnection(urlsplit(h.sim.url).netloc, timeout=5)
    creds = base64.b64encode(f"{DEFAULT_ACCOUNT_SID}:{DEFAULT_AUTH_TOKEN}".encode()).decode()
    sockets = []
    for token in (DEFAULT_AUTH_TOKEN, "wrong"):
        auth = creds if token == DEFAULT_AUTH_TOKEN else base64.b64encode(b"x:y").decode()
        conn.request("GET", CALLS, headers={"Authorization": f"Basic {auth}"})
        response = conn.getresponse()
        text = response.read().decode()
        h.seen.append(("GET", CALLS, response.status, text, None))
        assert int(response.headers["Content-Length"]) == len(text.encode())
        sockets.append(conn.sock)
    assert sockets[0] is sockets[1] is not None
    conn.close()


def test_a_stopped_simulator_answers_nothing(harness: Callable[..., Harness]) -> None:
    h = harness()
    client = h.make_client(timeout=2)
    client.calls.list(to=TO)
    h.sim.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        client.calls.list(to=TO)
    assert len(h.sim.requests()) == 1  # nothing after stop() reaches the ledger
    h.seen.pop()


def test_the_plan_sees_the_nth_call_to_each_number(harness: Callable[..., Harness]) -> None:
    asked: list[tuple[str, int]] = []
    h = harness(plan=lambda to, nth: asked.append((to, nth)) or STANDARD)
    for to in (TO, TO2, TO):
        h.client.calls.create(to=to, from_=FROM, url=URL)
    assert asked == [(TO, 0), (TO2, 0), (TO, 1)]


def test_default_plan_is_deterministic_and_weighted_as_documented() -> None:
    assert default_plan(7, TO, 0) == default_plan(7, TO, 0) != default_plan(7, TO, 1)
    sample = [default_plan(1, f"+1415555{i:04d}", 0) for i in range(4000)]
    share = {
        o: sum(p.outcome == o for p in sample) / len(sample)
        for o in ("completed", "no-answer", "busy", "failed")
    }
    assert share == pytest.approx(
        {"completed": 0.65, "no-answer": 0.15, "busy": 0.12, "failed": 0.08}, abs=0.03
    )
    assert all(
        0.2 <= p.queue_s <= 1 and 2 <= p.ring_s <= 10 and 15 <= p.talk_s <= 90 for p in sample
    )
    assert {p.answered_by for p in sample} == {None}


# ---- the contract itself -------------------------------------------------------------------------


def test_contract_flags_bad_requests_and_passes_good_ones() -> None:
    sid = "CA" + "a" * 32
    good = {
        "To": [TO],
        "From": [FROM],
        "Url": [URL],
        "StatusCallbackEvent": ["initiated", "answered"],
    }
    assert validate_request("POST", CALLS, good) == []
    assert (
        validate_request("GET", CALLS, {"To": [TO], "StartTime>": ["2025-07-01T12:30:00Z"]}) == []
    )
    assert validate_request("POST", f"{ACCOUNT}/Calls/{sid}.json", {"Status": ["canceled"]}) == []

    assert any("To" in v for v in validate_request("POST", CALLS, {"From": [FROM], "Url": [URL]}))
    assert any("PageSize" in v for v in validate_request("GET", CALLS, {"PageSize": ["5000"]}))
    assert any("Sid" in v for v in validate_request("GET", f"{ACCOUNT}/Calls/CAxyz.json", {}))
    assert any(
        "Status" in v
        for v in validate_request("POST", f"{ACCOUNT}/Calls/{sid}.json", {"Status": ["busy"]})
    )
    assert validate_request(
        "POST", CALLS, {**good, "Timeout": ["soon"], "Method": ["PUT"], "Record": ["yes"]}
    )
    assert validate_request("POST", CALLS, {**good, "Url": ["not a url"]})
    assert validate_request("POST", CALLS, {**good, "To": [TO, TO2]})  # not an array field
    assert validate_request("GET", CALLS, {"Pagesize": ["5"]})  # a typo Twilio would ignore
    assert validate_request("GET", "/2010-04-01/Accounts/ACnotvalid/Calls.json", {})
    assert validate_request("DELETE", CALLS, {})  # no such operation


def test_contract_checks_response_bodies() -> None:
    call = {
        "sid": "CA" + "a" * 32,
        "status": "queued",
        "date_created": "Tue, 31 Aug 2010 20:36:28 GMT",
    }
    assert validate_response("POST", CALLS, 201, call) == []
    assert validate_response("POST", CALLS, 200, call)  # Twilio answers a create with 201
    assert validate_response("POST", CALLS, 201, {**call, "status": "dialing"})
    assert validate_response("POST", CALLS, 201, {**call, "date_created": "yesterday"})
    assert validate_response("POST", CALLS, 201, {**call, "lead_id": "7"})  # not a spec property
    error = {
        "code": 20404,
        "message": "nope",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }
    assert validate_response("GET", CALLS, 404, error) == []
    assert validate_response("GET", CALLS, 404, {"message": "nope"})


# ---- clocks, reachability, SIDs -----------------------------------------------------------------


def test_the_date_header_comes_from_the_simulators_clock(harness: Callable[..., Harness]) -> None:
    """Twilio's clock is its own: a dialer measures the offset from the Date header."""
    h = harness()
    h.clock.now = T0 - 90  # 90 s behind real time
    h.client.calls.list(to=TO)
    headers = h.seen[-1][4]
    assert parsedate_to_datetime(headers["Date"]).timestamp() == int(T0 - 90)


def test_a_simulator_that_goes_down_refuses_connections_and_comes_back_with_its_ledger(
    harness: Callable[..., Harness],
) -> None:
    h = harness()
    h.client.calls.create(to=TO, from_=FROM, url=URL)
    url = h.sim.url
    h.sim.go_down()
    plain = Client(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, http_client=TwilioHttpClient(timeout=2))
    plain.api.base_url = url
    with pytest.raises(requests.exceptions.ConnectionError):
        plain.calls.list(to=TO)
    assert len(h.sim.requests()) == 1  # what never arrived is not in the ledger
    h.sim.come_up()
    assert h.sim.url == url
    assert [c.to for c in h.client.calls.list(to=TO)] == [TO]


def test_sids_never_repeat_across_simulators_with_one_seed() -> None:
    """A resumed simulated run starts a fresh simulator on the same seed: its SIDs must be new."""
    sids = set()
    for _ in range(2):
        with Simulator(seed=0) as sim:
            client = Client(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)
            client.api.base_url = sim.url
            sids |= {client.calls.create(to=TO, from_=FROM, url=URL).sid for _ in range(3)}
    assert len(sids) == 6


# ---- prices --------------------------------------------------------------------------------------


def test_a_connected_call_is_priced_per_started_minute_after_the_delay_and_others_never(harness):
    long_talk = CallPlan("completed", queue_s=1, ring_s=4, talk_s=61)
    busy = CallPlan("busy", queue_s=1, ring_s=4)
    h = harness(plan=plans(STANDARD, {TO2: long_talk, TO3: busy}), price_delay_s=30)
    sids = [h.client.calls.create(to=to, from_=FROM, url=URL).sid for to in (TO, TO2, TO3)]
    h.clock.advance(66)  # all three have ended; the first 51 s ago, the second just now
    first, second, unanswered = (h.client.calls(sid).fetch() for sid in sids)
    assert (first.price, first.price_unit) == ("-0.01300", "USD")  # 10 s: one started minute
    assert second.status == "completed" and second.price is None  # Twilio has not priced it yet
    assert unanswered.status == "busy" and unanswered.price is None
    h.clock.advance(30)
    listed = h.client.calls.list(status="completed", end_time_after=at(0).date().isoformat())
    prices = {c.sid: c.price for c in listed}
    assert prices == {sids[0]: "-0.01300", sids[1]: "-0.02600"}  # 61 s: two started minutes
    assert h.client.calls(sids[2]).fetch().price is None  # never connected: never charged
