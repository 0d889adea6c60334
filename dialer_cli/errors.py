"""Errors a user sees as one line, each carrying the exit code the README documents.

Exit codes are a contract shared by every command: 0 done, 1 runtime failure, 2 bad input or
usage, 3 stopped before done, 4 busy, 130 interrupted twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_STOPPED = 3
EXIT_BUSY = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what `cat` reports when its reader goes away


class DialerError(Exception):
    """Base class: the message is shown as one line on stderr, never with a traceback."""

    exit_code = EXIT_FAILURE


class InputError(DialerError):
    """Bad input the user can fix: a file, a flag, a config key. Nothing was written."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(InputError):
    """A configuration file or setting is wrong (unknown key, wrong type, missing credential)."""


class LeadsError(InputError):
    """A lead source cannot be read (encoding, missing phone column, malformed CSV, bad query)."""


class BusyError(DialerError):
    """Another process drives this run, or the source already has an unfinished run."""

    exit_code = EXIT_BUSY


class StoreError(DialerError):
    """The database cannot be used (locked past the timeout, full, read-only, too new)."""


class AccountError(DialerError):
    """Twilio refused the account or the From number: the run stops, resumable once fixed."""


class UnreachableError(DialerError):
    """Twilio did not answer at all: nothing was learnt, so nothing is reported as known."""


@dataclass
class TwilioFailure(Exception):
    """A request Twilio did not complete, classified by what is safe to do next.

    kind: "account" (credentials, From number, account state: the run stops), "rejected" (this
    lead only), "retry" (certainly not processed: back off and retry), "unknown" (a create that
    may have placed a call: reconcile, never resend blindly), "not_found".
    unreachable: no HTTP answer at all (refused, timed out, closed): Twilio may be down or the
    network gone; an answer of any status, even 500, is not this.
    """

    kind: str
    message: str
    code: int | None = None
    status: int | None = None
    retry_after: float | None = None
    unreachable: bool = False

    def __str__(self) -> str:
        code = f" (Twilio error {self.code})" if self.code else ""
        return f"{self.message}{code}"


def redact(text: str, secret: str, mask: str = "***") -> str:
    """Mask `secret` where it stands as a value, never inside another word: with a token `x`,
    "expected" stays "expected", while "token x;" and "x@host" lose it."""
    if not secret:
        return text
    return re.sub(rf"(?<![\w]){re.escape(secret)}(?![\w])", lambda _: mask, text)
