"""The real engine with a SIGKILL at a named step boundary: for the crash tests only.

    python -m tests.crash_entry --db D --config C --run RUN_ID --kill-at POINT --nth K

drives run RUN_ID exactly as `dialer resume` does (`runner.drive`: the real Store, the real
twilio adapter over HTTP, the real OS lock, `take_over`), except that the Store and the Calls
object are wrapped here so that the process SIGKILLs itself on the K-th pass over POINT:

- after_claim_commit: `Store.claim` returned a committed claim; the create was not sent.
- after_create_sent:  the create request went out (and came back, or failed); SID not saved.
- after_sid_saved:    `Store.save_sid` returned.
- while_polling:      the K-th `fetch` of a call's status, or `live` list poll (N > 3),
                      returned; the answer is not recorded.
- after_voicemail_pending: a machine message was recorded `pending`; its update not sent.
- after_redirect_sent: the update carrying a machine message went out (and came back, or
                      failed); its result is not recorded.
- never:              no kill (drive the run to its end).

Nothing in dialer_cli knows about this: no test switch lives in production code. Exit codes are
the CLI's: 0 completed, 3 stopped, and a DialerError's own code; a kill shows as -9 to the parent.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from dialer_cli import runner
from dialer_cli.config import load_settings
from dialer_cli.errors import DialerError
from dialer_cli.models import CallInfo, CallParams, Claim, Event, RunStatus
from dialer_cli.store import Store

POINTS = ("after_claim_commit", "after_create_sent", "after_sid_saved", "while_polling")
VOICEMAIL_POINTS = ("after_voicemail_pending", "after_redirect_sent")  # only with a machine message


class KillSwitch:
    """SIGKILLs this process on the nth pass over one named point; counts the others."""

    def __init__(self, point: str, nth: int):
        self.point, self.nth = point, nth
        self.seen: dict[str, int] = {}

    def __call__(self, point: str) -> None:
        self.seen[point] = self.seen.get(point, 0) + 1
        if point == self.point and self.seen[point] == self.nth:
            sys.stdout.flush()
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class CrashingStore(Store):
    """The real Store; `claim` and `save_sid` pass their step boundary to the kill switch."""

    kill: KillSwitch = KillSwitch("never", 0)

    def claim(self, *args: Any, **kwargs: Any) -> Claim | None:
        claim = super().claim(*args, **kwargs)
        if claim is not None:  # committed: only now may the create be sent
            self.kill("after_claim_commit")
        return claim

    def save_sid(self, *args: Any, **kwargs: Any) -> bool:
        saved = super().save_sid(*args, **kwargs)
        self.kill("after_sid_saved")
        return saved

    def voicemail_pending(self, token: str) -> bool:
        pending = super().voicemail_pending(token)
        if pending:
            self.kill("after_voicemail_pending")
        return pending


class CrashingCalls:
    """The real TwilioCalls; `create` and `fetch` pass their step boundary to the kill switch."""

    def __init__(self, inner: Any, kill: KillSwitch):
        self.inner, self.kill = inner, kill

    def create(self, to: str, from_: str, params: CallParams) -> CallInfo:
        try:
            return self.inner.create(to, from_, params)
        finally:  # answered or not, the request left: the SID (if any) is not saved yet
            self.kill("after_create_sent")

    def fetch(self, sid: str) -> CallInfo:
        info = self.inner.fetch(sid)
        self.kill("while_polling")
        return info

    def live(self) -> dict[str, CallInfo]:
        """The list poll of N > 3 calls in flight: a kill here loses a whole pass of answers."""
        found = self.inner.live()
        self.kill("while_polling")
        return found

    def recent(self, to: str, from_: str, since: float) -> list[CallInfo]:
        return self.inner.recent(to, from_, since)

    def end(self, sid: str, answered: bool) -> CallInfo:
        return self.inner.end(sid, answered)

    def redirect(self, sid: str, twiml: str | None, url: str | None) -> CallInfo:
        try:
            return self.inner.redirect(sid, twiml, url)
        finally:  # the update left: what it did is not recorded yet
            self.kill("after_redirect_sent")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_entry", description=__doc__)
    parser.add_argument("--db", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--run", required=True, type=int)
    parser.add_argument("--kill-at", required=True, choices=(*POINTS, *VOICEMAIL_POINTS, "never"))
    parser.add_argument("--nth", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    def on_event(event: Event) -> None:
        print(json.dumps({"event": event.kind, "at": event.at, **event.data}, default=str))
        sys.stdout.flush()

    try:
        kill = KillSwitch(args.kill_at, args.nth)
        store = CrashingStore.open(args.db)
        store.kill = kill
        run_ = store.get_run(args.run)
        target = runner.target_for_run(run_, load_settings(args.config, os.environ))
        calls = CrashingCalls(runner.open_calls(target), kill)
        status = runner.drive(store, args.run, target, on_event=on_event, calls=calls)
    except DialerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps({"event": "exit", "status": status, "seen": kill.seen}))
    return 0 if status == RunStatus.COMPLETED else 3


if __name__ == "__main__":
    sys.exit(main())
