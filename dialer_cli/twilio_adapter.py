"""The only module that talks to the twilio package.

It turns the twilio/requests exception zoo into one `TwilioFailure` whose `kind` tells the engine
what is safe: a create that timed out may have placed a call, a 429 certainly did not.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from dialer_cli.errors import TwilioFailure
from dialer_cli.models import CallInfo, CallParams

# twilio's HTTP client logs request headers at INFO; keep Basic auth out of any log a user enables.
logging.getLogger("twilio.http_client").setLevel(logging.WARNING)

# Create-time rejections that concern one lead only: the run goes on without it.
PER_LEAD_CODES = frozenset(
    {
        21211,
        21214,
        21215,
        21216,
        21217,
        21219,
        21401,
        21407,
        21408,
        13223,
        13224,
        13225,
        13226,
        13227,
    }
)
# The account's concurrent-call limit and the REST rate limit: nothing happened, try later.
RETRY_CODES = frozenset({10004, 20429})


OFFSET_SAMPLES = 9  # Date headers kept for the clock-offset estimate


class _HttpClient(TwilioHttpClient):
    """Remembers the last response's headers, for Retry-After (TwilioRestException drops them),
    and measures how far our clock runs ahead of Twilio's from each response's Date header."""

    last_headers: Any = None

    def __init__(self, timeout: float, clock: Callable[[], float]):
        super().__init__(timeout=timeout)
        self.clock = clock
        self.offsets: deque[float] = deque(maxlen=OFFSET_SAMPLES)

    def request(self, *args: Any, **kwargs: Any) -> Response:
        self.last_headers = None
        sent = self.clock()
        response = super().request(*args, **kwargs)
        self.last_headers = response.headers
        self._measure(sent, self.clock(), response.headers)
        return response

    def _measure(self, sent: float, received: float, headers: Any) -> None:
        """Twilio wrote Date somewhere between our send and our receipt, truncated to the
        second: compare it (plus half a second) with the middle of the round trip."""
        date = _parse_time(headers.get("Date") if headers is not None else None)
        if date is not None:
            self.offsets.append((sent + received) / 2 - (date.timestamp() + 0.5))


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _info(call: Any) -> CallInfo:
    duration = getattr(call, "duration", None)
    return CallInfo(
        sid=call.sid,
        status=str(call.status or ""),
        to=call.to or "",
        from_=call._from or "",
        date_created=call.date_created if isinstance(call.date_created, datetime) else None,
        start_time=call.start_time if isinstance(call.start_time, datetime) else None,
        end_time=call.end_time if isinstance(call.end_time, datetime) else None,
        duration=int(duration) if duration not in (None, "") else None,
        answered_by=call.answered_by or None,
        direction=call.direction or None,
        price=call.price or None,
        price_unit=call.price_unit or None,
    )


class TwilioCalls:
    """Create, poll, list and end calls through the real twilio client."""

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        base_url: str,
        http_timeout: float,
        clock: Callable[[], float] = time.time,
    ):
        self._http = _HttpClient(http_timeout, clock)
        # A non-empty environment stops the client reading TWILIO_REGION/TWILIO_EDGE, which would
        # rewrite a loopback base URL.
        self._client = Client(
            account_sid, auth_token, http_client=self._http, environment={"DIALER": "1"}
        )
        self._client.api.base_url = base_url.rstrip("/")
        self.account_sid, self.base_url, self.http_timeout = account_sid, base_url, http_timeout

    def clock_offset(self) -> float:
        """How many seconds our clock runs ahead of Twilio's (negative: behind): the median of
        the last few responses' Date headers, so one slow answer does not move it; 0 before
        the first answer."""
        return statistics.median(self._http.offsets) if self._http.offsets else 0.0

    # -- the four verbs the engine needs ------------------------------------------------------

    def create(self, to: str, from_: str, params: CallParams) -> CallInfo:
        kwargs: dict[str, Any] = {"to": to, "from_": from_}
        for name in ("twiml", "url", "timeout", "time_limit", "record", "machine_detection"):
            value = getattr(params, name)
            if value is not None:
                kwargs[name] = value
        try:
            return _info(self._client.calls.create(**kwargs))
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised as TwilioFailure
            raise self._failure(exc, creating=True) from None

    def fetch(self, sid: str) -> CallInfo:
        try:
            return _info(self._client.calls(sid).fetch())
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc, creating=False) from None

    def live(self) -> dict[str, CallInfo]:
        """Every call of the account that is queued, ringing or in progress, by SID: three list
        requests (one per status, 1,000 a page) however many calls are being polled."""
        found: dict[str, CallInfo] = {}
        try:
            for status in ("queued", "ringing", "in-progress"):
                for call in self._client.calls.stream(status=status, page_size=1000):
                    found[call.sid] = _info(call)
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc, creating=False) from None
        return found

    def recent(self, to: str, from_: str, since: float) -> list[CallInfo]:
        """Calls to `to` from `from_` created at or after `since` (epoch s, our clock), newest
        first.

        Filters on date_created client-side: StartTime is empty while a call is queued.
        date_created is Twilio's clock: when ours runs ahead, `since` moves back by the measured
        offset (measured on this very answer too), so a call whose create answer was lost is
        still found. It only ever widens the window: a call is never missed for a clock.
        """
        found: list[CallInfo] = []
        try:
            page = self._client.calls.page(to=to, from_=from_, page_size=50)
            since -= max(self.clock_offset(), 0.0)
            while page is not None:
                calls = [_info(c) for c in page]
                for info in calls:
                    if info.date_created is None or info.date_created.timestamp() >= since:
                        found.append(info)
                oldest = calls[-1].date_created if calls else None
                if not calls or (oldest is not None and oldest.timestamp() < since):
                    break
                page = page.next_page()
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc, creating=False) from None
        return found

    def completed(self, ended_on_or_after: str, created_since: float) -> list[CallInfo]:
        """Completed calls that ended on or after a UTC day (YYYY-MM-DD, the form Twilio
        documents), newest first, paging back (1,000 a page) only until calls created before
        `created_since` (epoch s): how prices are collected, one request for many calls."""
        found: list[CallInfo] = []
        try:
            page = self._client.calls.page(
                status="completed", end_time_after=ended_on_or_after, page_size=1000
            )
            while page is not None:
                calls = [_info(c) for c in page]
                found.extend(calls)
                oldest = calls[-1].date_created if calls else None
                if not calls or (oldest is not None and oldest.timestamp() < created_since):
                    break
                page = page.next_page()
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc, creating=False) from None
        return found

    def end(self, sid: str, answered: bool) -> CallInfo:
        """Cancel a call not yet answered, hang up one that is."""
        status = "completed" if answered else "canceled"
        try:
            return _info(self._client.calls(sid).update(status=status))
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc, creating=False) from None

    def redirect(self, sid: str, twiml: str | None, url: str | None) -> CallInfo:
        """Replace what a live call is doing with other TwiML (or the TwiML at a URL): one
        update request, which is not idempotent (a second one restarts the message).

        Failures are classified as a create's: a 5xx or a lost answer may have redirected the
        call ("unknown"), a 429 certainly did not ("retry"). A refusal that concerns this call
        (21220: it ended first; 404; a message Twilio will not take) is "rejected": the run
        goes on. Only refused credentials are an account problem."""
        kwargs = {"twiml": twiml} if twiml is not None else {"url": url}
        try:
            return _info(self._client.calls(sid).update(**kwargs))
        except Exception as exc:  # noqa: BLE001
            failure = self._failure(exc, creating=True)
        if failure.kind == "account" and failure.status not in (401, 403):
            failure = dataclasses.replace(failure, kind="rejected")  # this call's problem only
        raise failure from None

    def check_account(self) -> str:
        """One read-only request that proves the credentials: returns the account's name."""
        try:
            account = self._client.api.v2010.accounts(self.account_sid).fetch()
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc, creating=False) from None
        return str(account.friendly_name or account.sid)

    def owns_number(self, number: str) -> bool:
        """Whether `number` is one of the account's phone numbers: Twilio refuses any other From.
        One read-only request: GET IncomingPhoneNumbers.json?PhoneNumber=..."""
        try:
            found = self._client.incoming_phone_numbers.list(phone_number=number, limit=1)
        except Exception as exc:  # noqa: BLE001
            raise self._failure(exc, creating=False) from None
        return any(n.phone_number == number for n in found)

    # -- error classification -----------------------------------------------------------------

    def _retry_after(self) -> float | None:
        headers = self._http.last_headers
        value = headers.get("Retry-After") if headers is not None else None
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def _failure(self, exc: Exception, *, creating: bool) -> TwilioFailure:
        if isinstance(exc, TwilioRestException):
            return self._classify(exc.status, exc.code, _message(exc), creating)
        if isinstance(exc, TwilioException):  # list()/page() errors: the response is args[1]
            response = exc.args[1] if len(exc.args) > 1 else None
            status = getattr(response, "status_code", None)
            if status is not None:
                return self._classify(status, None, f"Twilio answered HTTP {status}", creating)
        if isinstance(exc, requests.exceptions.RequestException | TwilioException):
            why = unreachable_reason(exc, self.http_timeout)
            kind = "unknown" if creating else "retry"
            return TwilioFailure(kind, why, unreachable=True)
        raise exc

    def _classify(
        self, status: int | None, code: int | None, message: str, creating: bool
    ) -> TwilioFailure:
        status = status or 0
        code = code if code and code != status else None
        if status == 429 or code in RETRY_CODES:
            return TwilioFailure("retry", message, code, status, self._retry_after())
        if status in (401, 403) or code == 20003:
            return TwilioFailure("account", "Twilio refused the credentials", code, status)
        if status >= 500 or status == 0:
            kind = "unknown" if creating else "retry"
            return TwilioFailure(kind, message, code, status, self._retry_after())
        if status == 404 and not creating:
            return TwilioFailure("not_found", message, code, status)
        if creating and code in PER_LEAD_CODES:
            return TwilioFailure("rejected", message, code, status)
        return TwilioFailure("account", message, code, status)


def unreachable_reason(exc: BaseException, timeout: float) -> str:
    """Why no answer came, in words a user can act on (the exception names are urllib3's)."""
    text = " ".join(str(e) for e in (exc, exc.__cause__, exc.__context__) if e).lower()
    if isinstance(exc, requests.exceptions.Timeout) or "timed out" in text:
        return f"no answer within {timeout:g} s"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed"
    if "refused" in text:
        return "connection refused"
    if "resolve" in text or "name or service" in text or "nodename" in text:
        return "host not found"
    if "unreachable" in text:
        return "network unreachable"
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return "invalid URL"
    if "aborted" in text or "reset" in text or "disconnected" in text:
        return "connection closed without an answer"
    return type(exc).__name__


def _message(exc: TwilioRestException) -> str:
    text = str(getattr(exc, "msg", "") or "")
    for verb in ("create", "fetch", "update"):
        text = text.removeprefix(f"Unable to {verb} record: ")
    return text or f"HTTP {exc.status}"
