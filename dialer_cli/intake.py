"""Turning a lead source into a run: which run a source belongs to, the rules applied while
importing (do-not-call, already called, templates, time zones), and the dry run that applies
them without writing anything."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dialer_cli import rules
from dialer_cli.config import Settings
from dialer_cli.errors import BusyError, InputError
from dialer_cli.models import Lead, Run, RunStatus
from dialer_cli.runner import Target
from dialer_cli.store import IMPORTING, Store

if TYPE_CHECKING:
    from dialer_cli.leads import LeadSource


def run_settings(settings: Settings) -> dict[str, object]:
    """The parts of the configuration a run keeps, so a resume dials the same way."""
    return {
        "call": _plain(dataclasses.asdict(settings.call)),
        "dialing": _plain(dataclasses.asdict(settings.dialing)),
        "leads": _plain(dataclasses.asdict(settings.leads)),
        "from_numbers": list(settings.twilio.from_numbers),
    }


def _plain(section: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, str | int | float | bool | list):
            value = str(value)
        out[key] = value
    return out


def check_source(store: Store, source: LeadSource, target: Target, new: bool) -> None:
    """A quick early answer (before the source is read) for a start that would be refused;
    `import_run` makes the decision that counts, inside the transaction that creates the run."""
    if not new:
        refuse_rerun(store.latest_run(source_key=source.key, target=target.key), source, target)


def refuse_rerun(latest: Run | None, source: LeadSource, target: Target) -> None:
    """One unfinished run per source and account: starting it again names the run to resume
    (or the one another process is importing right now).

    A completed source is dialled again only with --new, except on the simulator, which
    reaches nobody (so the demo can be run again and again).
    """
    if latest is None:
        return
    if latest.status == IMPORTING:
        raise BusyError(
            f"{source.name} already has an unfinished run {latest.id} (being imported by another "
            f"process); wait for it to finish or pass --new"
        )
    if latest.status == RunStatus.COMPLETED:
        if target.simulated:
            return
        raise InputError(
            f"{source.name} was already dialled in run {latest.id} (completed); "
            f"pass --new to dial it again"
        )
    raise BusyError(
        f"{source.name} already has an unfinished run {latest.id} ({latest.status}); "
        f"continue it with `dialer resume {latest.id}` or pass --new"
    )


def import_run(
    store: Store,
    source: LeadSource,
    settings: Settings,
    target: Target,
    now: float,
    campaign: str | None = None,
    *,
    new: bool = False,
    writeback: dict[str, str] | None = None,
) -> int:
    """Create the run from the source in one transaction, applying the rules known at import:
    do-not-call lists, template checks, each lead's time zones for calling hours.

    Unless `new` (the user asked for a second run) or the run belongs to a campaign (whose
    lock and `existing_campaign_run` decide), the same transaction first refuses a source
    that already has a run (`refuse_rerun`): of two starts at once, exactly one imports.
    `writeback` (writeback.spec) is kept with the run: its final leads then feed the outbox.
    """
    check_templates(settings, source.columns)
    skip = import_rules(store, settings, source.name, campaign, now)
    guard = None if new or campaign is not None else lambda r: refuse_rerun(r, source, target)
    return store.create_run(
        source=source.name,
        source_key=source.key,
        leads=source,
        target=target.key,
        base_url=None if target.simulated else target.base_url,
        from_number=target.from_number,
        concurrency=settings.dialing.concurrency,
        settings=run_settings(settings)
        | ({"sim_speed": target.speed} if target.simulated else {})
        | ({"writeback": writeback} if writeback else {}),
        now=now,
        campaign=campaign,
        skip=skip,
        zones=zones_rule(settings.dialing.calling_hours, settings.dialing.timezone),
        guard=guard,
    )


def check_templates(settings: Settings, columns: list[str]) -> None:
    rules.check_template_columns(settings.call.twiml, "call.twiml", columns)
    rules.check_template_columns(settings.call.url, "call.url", columns)
    rules.check_template_columns(settings.call.machine_twiml, "call.machine_twiml", columns)
    rules.check_template_columns(settings.call.machine_url, "call.machine_url", columns)


def import_rules(
    store: Store,
    settings: Settings,
    source_name: str,
    campaign: str | None = None,
    now: float | None = None,
) -> Callable[[Lead], tuple[str, str] | None]:
    """Why a valid lead is not dialled at all: do-not-call, or already answered in an earlier
    run of the campaign; an unusable filled template aborts the whole import (raised, so the
    transaction rolls back)."""
    dnc_file = rules.DncFile(settings.dialing.do_not_call, settings.leads.default_region)
    twiml = settings.call.twiml if rules.template_fields(settings.call.twiml) else None
    machine = settings.call.machine_twiml
    machine = machine if rules.template_fields(machine) else None
    dnc_db = store.dnc_numbers()
    answered: set[str] = set()
    if campaign is not None:
        recall = settings.dialing.recall_after
        since = (now or time.time()) - recall if recall is not None else None
        answered = store.answered_in_campaign(campaign, since)

    def skip(lead: Lead) -> tuple[str, str] | None:
        if twiml is not None:
            rules.check_twiml_length(rules.fill_twiml(twiml, lead.fields), lead.line, source_name)
        if machine is not None:
            filled = rules.fill_twiml(machine, lead.fields)
            rules.check_twiml_length(filled, lead.line, source_name, "call.machine_twiml")
        assert lead.e164 is not None
        if lead.e164 in dnc_file:
            return "do-not-call", f"on the do-not-call list {dnc_file.path}"
        if lead.e164 in dnc_db:
            return "do-not-call", "on the do-not-call list (dialer dnc)"
        if lead.e164 in answered:
            return "already-called", f"answered in an earlier run of campaign {campaign}"
        return None

    return skip


def zones_rule(calling_hours: str | None, timezone: str | None) -> Callable[[Lead], str] | None:
    if not calling_hours:
        return None
    fallback = timezone or rules.local_zone()

    def zones(lead: Lead) -> str:
        assert lead.e164 is not None
        return ",".join(rules.lead_zones(lead.e164, lead.fields.get("timezone"), fallback))

    return zones


def dry_run(
    source: LeadSource, settings: Settings, store: Store | None, now: float
) -> dict[str, Any]:
    """What `start` would do, without writing anything or dialling anybody."""
    check_templates(settings, source.columns)
    skip = import_rules(store, settings, source.name) if store else None
    dnc = rules.DncFile(settings.dialing.do_not_call, settings.leads.default_region)
    hours = settings.dialing.calling_hours
    window = rules.Hours.parse(hours, settings.dialing.calling_days) if hours else None
    zones = zones_rule(hours, settings.dialing.timezone)
    skipped: dict[str, dict[str, Any]] = {}
    later: dict[str, Any] = {"count": 0, "examples": []}
    rows = dial = 0
    for lead in source:
        rows += 1
        reason = (lead.skip_reason, lead.skip_detail)
        if reason[0] is None and lead.e164 in dnc:
            reason = ("do-not-call", f"on the do-not-call list {dnc.path}")
        if reason[0] is None and skip is not None:
            reason = skip(lead) or (None, None)
        if reason[0] is not None:
            _example(skipped.setdefault(reason[0], {"count": 0, "examples": []}), lead, reason[1])
            continue
        dial += 1
        if window and zones and not window.open_all(tuple(zones(lead).split(",")), now):
            _example(later, lead, "outside calling hours now")
    return {
        "source": source.name,
        "rows": rows,
        "would_dial": dial,
        "skipped": skipped,
        "outside_hours_now": later,
        "concurrency": settings.dialing.concurrency,
        "calling_hours": hours,
    }


def _example(bucket: dict[str, Any], lead: Lead, detail: str | None) -> None:
    bucket["count"] += 1
    if len(bucket["examples"]) < 3:
        bucket["examples"].append({"line": lead.line, "phone": lead.phone, "detail": detail})


def existing_campaign_run(
    store: Store, campaign: str | None, target: Target, new: bool
) -> int | None:
    """Re-running a campaign resumes its unfinished run instead of duplicating it."""
    if campaign is None or new:
        return None
    latest = store.latest_run(campaign=campaign, target=target.key)
    if latest is None or latest.status == RunStatus.COMPLETED:
        return None
    return latest.id
