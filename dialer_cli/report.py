"""What the views and reports show, read from the store: live data, report rows, statistics."""

from __future__ import annotations

from typing import Any

from dialer_cli import runner
from dialer_cli.store import Store


def live_data(store: Store, run_id: int, now: float) -> dict[str, Any]:
    """Everything the live view draws: the status object, calls in flight, last calls ended."""
    live = [
        {
            "name": c.name,
            "to": c.to,
            "status": c.twilio_status or c.job_state,
            "for": f"{now - c.claimed_at:.0f}s",
        }
        for c in store.live_calls(run_id)
    ]
    recent = [
        {"name": r["name"], "to": r["to"], "status": r["twilio_status"], "dur": r["duration_s"]}
        for r in store.recent_ended(run_id)
    ]
    return {"status": runner.snapshot(store, run_id, now), "live": live, "recent": recent}
