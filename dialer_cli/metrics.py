"""`--metrics-file PATH`: the run's metrics in Prometheus' text format, for cron monitoring.

node_exporter's textfile collector reads every `*.prom` file of a folder on each scrape, so the
file is replaced atomically (a temporary file in the same folder, then a rename): a scrape sees
the previous version or the new one, never half of one. It is written every 15 s while the run
goes (from the runner, between the loop's passes) and once at the end with the exit status.

Written by hand rather than with prometheus_client: the format is a few lines of text, and the
dialer gains no runtime dependency for it (the tests parse it with prometheus_client's parser).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from dialer_cli import report, runner
from dialer_cli.errors import InputError
from dialer_cli.models import RunStatus
from dialer_cli.store import Store

EVERY = 15.0  # seconds between writes while the run goes
LEAD_STATES = ("queued", "dialing", "calling", "completed", "failed", "skipped", "needs_review")
CALL_OUTCOMES = ("answered", "busy", "no_answer", "failed", "canceled", "rejected")
Sample = tuple[dict[str, str], float]


def check_writable(path: Path) -> None:
    """Refuse a metrics file that could never be written, before anything else happens (bad
    input: exit 2, no run), by creating and removing a temporary file beside it."""
    if path.is_dir():
        raise InputError(f"--metrics-file {path}: is a folder; name a file such as dialer.prom")
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent or Path("."), prefix=".dialer-"):
            pass
    except OSError as exc:
        raise InputError(f"--metrics-file {path}: cannot write there ({exc.strerror})") from None


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename; readable by node_exporter's user (0644)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def writeback_pending(store: Store, run_id: int) -> int:
    """Rows of the run waiting in the write-back outbox (0 for a run without write-back)."""
    return int(store.writeback_counts(run_id)["pending"])


def last_success(store: Store, run_id: int) -> float:
    """When a run of this campaign (or, without a campaign, of this source) last completed:
    0 if never, so an alert on its age fires for a job that never succeeded."""
    run_ = store.get_run(run_id)
    column, value = (
        ("campaign", run_.campaign) if run_.campaign else ("source_key", run_.source_key)
    )
    rows = store.read(
        f"SELECT max(finished_at) FROM runs WHERE {column}=? AND target=? AND status=?",
        (value, run_.target, RunStatus.COMPLETED),
    )
    return float(rows[0][0] or 0.0)


def calls_by_outcome(store: Store, run_id: int) -> dict[str, int]:
    """Calls (attempts, not leads: a retried lead places several) by how they ended."""
    rows = store.read(
        "SELECT twilio_status, result, count(*) FROM calls WHERE run_id=? "
        "AND (twilio_status IS NOT NULL OR result='rejected') GROUP BY twilio_status, result",
        (run_id,),
    )
    found = dict.fromkeys(CALL_OUTCOMES, 0)
    for status, result, n in rows:
        outcome = report.call_outcome(status, result).replace("-", "_")
        if outcome in found:
            found[outcome] += n
    return found


def text(store: Store, run_id: int, now: float, exit_status: int | None = None) -> str:
    """The whole file. Every sample carries `run_id` and `campaign` labels; the exit status is
    there only once the run's process has ended."""
    snap = runner.snapshot(store, run_id, now)  # not the statistics: they scan every call
    base = {"run_id": str(run_id), "campaign": snap["campaign"] or ""}
    cost = report.cost(store, run_id)
    leads = {
        "queued": snap["queued"],
        "dialing": snap["dialing"],
        "calling": snap["calling"],
        "completed": snap["completed"],
        "failed": snap["failed"],
        "skipped": snap["skipped"],
        "needs_review": snap["needs_review"],
    }
    families = [
        _family(
            "dialer_run_status",
            "gauge",
            "The run's status: 1 for the one it is in.",
            [({"status": s.value}, float(snap["status"] == s)) for s in RunStatus],
        ),
        _family(
            "dialer_leads",
            "gauge",
            "The run's leads by state.",
            [({"state": state}, leads[state]) for state in LEAD_STATES],
        ),
        _family(
            "dialer_calls_total",
            "counter",
            "Calls placed by the run, by outcome.",
            [({"outcome": o}, n) for o, n in calls_by_outcome(store, run_id).items()],
        ),
        _family(
            "dialer_calls_in_flight",
            "gauge",
            "Calls being set up or live.",
            [({}, snap["in_progress"])],
        ),
        _family(
            "dialer_writeback_pending",
            "gauge",
            "Outcomes waiting to be written back to the lead source.",
            [({}, writeback_pending(store, run_id))],
        ),
        _family(
            "dialer_cost",
            "gauge",
            "What the run's calls cost so far, in the currency label's units.",
            [({"currency": cost["unit"] or ""}, cost["amount"] or 0.0)],
        ),
        _family(
            "dialer_calls_without_price",
            "gauge",
            "Answered calls whose price Twilio has not given yet.",
            [({}, cost["calls_without_price"])],
        ),
        _family(
            "dialer_last_success_timestamp_seconds",
            "gauge",
            "When a run of this campaign (or source) last completed, in Unix time; 0 if never.",
            [({}, last_success(store, run_id))],
        ),
    ]
    if exit_status is not None:
        families.append(
            _family(
                "dialer_exit_status",
                "gauge",
                "The exit status of the run's dialer process (0 completed, 3 stopped before "
                "done, 1 failed, ...).",
                [({}, exit_status)],
            )
        )
    return "".join(_lines(name, base, family) for name, family in families)


def _family(
    name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]
) -> tuple[str, tuple[str, str, list[Sample]]]:
    return name, (kind, help_text, [(labels, float(v)) for labels, v in samples])


def _lines(name: str, base: dict[str, str], family: tuple[str, str, list[Sample]]) -> str:
    kind, help_text, samples = family
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in {**base, **labels}.items())
        out.append(f"{name}{{{pairs}}} {_number(value)}")
    return "\n".join(out) + "\n"


def _escape(value: str) -> str:
    """Label values escape backslash, double quote and newline (the text format's rule)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if value.is_integer() else repr(value)


class MetricsFile:
    """Writes one run's metrics to PATH: every EVERY seconds via `tend`, and `final` once."""

    def __init__(self, path: Path, store: Store, run_id: int, every: float = EVERY):
        self.path, self.store, self.run_id, self.every = path, store, run_id, every
        self._next_at = -math.inf

    def tend(self, now: float) -> bool:
        """Between passes: write if EVERY seconds have passed; True if it wrote. A failed write
        (disk full) is tried again next time rather than stopping the calls."""
        if now < self._next_at:
            return False
        self._next_at = now + self.every
        try:
            self.write(now)
        except OSError:
            return False
        return True

    def write(self, now: float, exit_status: int | None = None) -> None:
        write_atomically(self.path, text(self.store, self.run_id, now, exit_status))
