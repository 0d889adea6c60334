"""What each call cost: Twilio's `price` and `price_unit`, collected after the calls end.

Twilio fills a call's price in some time after it ends (null at first, then a negative decimal
string). Asking for each call would cost a request per call, and asking in the loop's claim path
would slow dialling. Instead the runner calls `PriceCollector.tend(now)` between the loop's
passes, and it sends at most one list request per interval (default a minute), and only while an
answered call of the run is missing its price: completed calls that ended on or after the day of
the oldest one missing, 1,000 a page, newest first, paging back no further than that call. At the
end of a run, `finish` asks again until every price is in or a bounded wait has passed; calls
still without one are counted (`stats.cost.calls_without_price`). A failed request is never
worth failing a run over: it is simply asked again next time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Protocol

from dialer_cli.errors import TwilioFailure
from dialer_cli.models import CallInfo
from dialer_cli.store import Store

EVERY = 60.0  # seconds between list requests while the run goes
PATIENCE = 1800.0  # a call still without a price this long after its end is no longer sought
FINAL_WAIT = 60.0  # how long the end of a run waits for the last prices
FINAL_EVERY = 10.0  # seconds between the end-of-run requests
CLOCK_SKEW = 60.0  # how far Twilio's clock may be from ours


class CompletedCalls(Protocol):
    """What collecting prices needs from Twilio; `twilio_adapter.TwilioCalls` provides it."""

    def completed(self, ended_on_or_after: str, created_since: float) -> list[CallInfo]: ...


def valid_price(text: str | None) -> bool:
    """A price worth recording: a decimal number (Twilio's strings, e.g. "-0.01300")."""
    if not text:
        return False
    try:
        return Decimal(text).is_finite()
    except InvalidOperation:
        return False


class PriceCollector:
    """Fills in the prices of one run's answered calls. Times are the loop's clock; `speed`
    shortens every interval for simulated runs, whose time runs that much faster."""

    def __init__(self, store: Store, calls: CompletedCalls, run_id: int, *, speed: float = 1.0):
        self.store, self.calls, self.run_id = store, calls, run_id
        self.every, self.patience = EVERY / speed, PATIENCE / speed
        self.final_wait, self.final_every = FINAL_WAIT / speed, FINAL_EVERY / speed
        self._next_at: float | None = None

    def tend(self, now: float) -> None:
        """Between passes: one list request once an interval has passed since the last."""
        if self._next_at is None:
            self._next_at = now + self.every  # nothing has been waiting for a price yet
        if now < self._next_at:
            return
        self._next_at = now + self.every
        self.collect(now)

    def collect(self, now: float) -> int:
        """One list request for the answered calls still missing a price (none if no call is
        missing one). Returns how many still are."""
        return self._collect(now)[0]

    def _collect(self, now: float) -> tuple[int, bool]:
        """(calls still missing a price, whether Twilio answered)."""
        missing = self.store.unpriced(self.run_id, now - self.patience)
        if not missing:
            return 0, True
        day = datetime.fromtimestamp(missing[0]["ended_at"] - CLOCK_SKEW, UTC).date().isoformat()
        since = min(r["claimed_at"] for r in missing) - CLOCK_SKEW
        try:
            found = self.calls.completed(day, since)
        except TwilioFailure:
            return len(missing), False
        wanted = {r["call_sid"] for r in missing}
        prices = [
            (c.sid, c.price or "", c.price_unit)
            for c in found
            if c.sid in wanted and valid_price(c.price)
        ]
        if prices:
            self.store.set_prices(prices)
        return len(missing) - len({sid for sid, _, _ in prices}), True

    def finish(
        self,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        give_up: Callable[[], bool] = lambda: False,
        waiting: Callable[[int, float], None] = lambda calls, seconds: None,
    ) -> int:
        """The end of the run: ask at once, then every `final_every` s until every answered call
        has its price, `final_wait` s have passed, Twilio fails to answer (a cron job does not
        hang on a dead network for prices), or `give_up()` (Ctrl-C). `waiting(calls, seconds)`
        is told once, before the first wait. Returns how many calls are still without a price."""
        deadline = clock() + self.final_wait
        announced = False
        while True:
            left, answered = self._collect(clock())
            now = clock()
            if not left or not answered or give_up() or now >= deadline:
                return left
            if not announced:
                waiting(left, deadline - now)
                announced = True
            sleep(min(self.final_every, deadline - now))
