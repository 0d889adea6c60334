"""Voicemail drop without webhooks: what a machine hears, and the words for what became of it.

With `call.machine_detection`, Twilio fills a call's `answered_by` once answering-machine
detection (AMD) has decided. The engine polls an answered call about every `AMD_POLL` seconds
while that verdict is pending and, when it names a machine, redirects the call with ONE update
carrying the machine message (`call.machine_twiml` or `call.machine_url`, filled per lead as
`call.twiml` and `call.url` are). The machine message therefore starts up to about AMD_POLL
(plus one request) after detection: the price of polling instead of a webhook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dialer_cli import rules

# Twilio's AnsweredBy values that mean a machine: machine_start with MachineDetection=Enable,
# machine_end_* with DetectMessageEnd (when the greeting ended: the moment to leave a message).
MACHINE = frozenset(
    {"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other"}
)
AMD_POLL = 0.5  # seconds between polls of an answered call while AMD has not decided
NOT_IN_PROGRESS = 21220  # Twilio's "Invalid call state": the update came after the call ended
AMD_WINDOW = 75.0  # s after the answer: AMD decides within MachineDetectionTimeout (at most 59)

# calls.voicemail: what became of a machine message. NULL: none was due (or not yet).
PENDING = "pending"  # committed before the update is sent; never sent twice
DROPPED = "dropped"  # Twilio accepted the update: the machine heard the message
UNCONFIRMED = "unconfirmed"  # the update got no answer (or the driver died): maybe sent
TOO_LATE = "too_late"  # the call had ended before the update arrived (Twilio's 21220)
FAILED = "failed"  # Twilio refused the update for this call (its message, say)


@dataclass(frozen=True)
class MachineMessage:
    """`call.machine_twiml` or `call.machine_url`, with `{field}` templates per lead."""

    twiml: str | None = None
    url: str | None = None

    @classmethod
    def from_call(cls, call: dict[str, Any]) -> MachineMessage | None:
        """From a run's stored `call` settings: None unless AMD is on and a message is set."""
        twiml, url = call.get("machine_twiml"), call.get("machine_url")
        if not call.get("machine_detection") or not (twiml or url):
            return None
        return cls(twiml=twiml or None, url=None if twiml else url)

    def for_lead(self, fields: dict[str, str]) -> tuple[str | None, str | None]:
        """(twiml, url) for one lead: values escaped as text in TwiML, quoted in a URL."""
        if self.twiml is not None:
            templated = rules.template_fields(self.twiml)
            return (rules.fill_twiml(self.twiml, fields) if templated else self.twiml), None
        assert self.url is not None
        templated = rules.template_fields(self.url)
        return None, rules.fill_url(self.url, fields) if templated else self.url


def is_machine(answered_by: str | None) -> bool:
    return answered_by in MACHINE
