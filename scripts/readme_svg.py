"""Draw the live status panel of a real simulated campaign into docs/status.svg (the README's
picture), so the picture is whatever the code draws today, not a hand-made mock-up.

The campaign runs in-process through the real store, engine and Twilio adapter against the
built-in simulator, on a fake clock: the same picture comes out on every machine. It stops
mid-way, with calls in flight, and the panel is printed into a recording Rich console.

    python scripts/readme_svg.py            # writes docs/status.svg
    python scripts/readme_svg.py --out x.svg --width 80
"""

from __future__ import annotations

import argparse
import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console  # noqa: TID251 - a script that draws, like render.py

from dialer_cli import lease, render, report
from dialer_cli.engine import Dialer, Options, Rules
from dialer_cli.models import CallParams, Lead
from dialer_cli.simulator import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, Simulator
from dialer_cli.store import Store
from dialer_cli.twilio_adapter import TwilioCalls

ROOT = Path(__file__).resolve().parent.parent
FROM = "+15005550006"
NAMES = (
    "Ada Lovelace, Grace Hopper, Alan Turing, Katherine Johnson, Edsger Dijkstra, Barbara "
    "Liskov, Donald Knuth, Margaret Hamilton, Vint Cerf, Ken Thompson, Frances Allen, John "
    "Backus, Radia Perlman, Niklaus Wirth, Hedy Lamarr, Dennis Ritchie, Annie Easley, Tony "
    "Hoare, Sophie Wilson, Leslie Lamport, Mary Keller, Claude Shannon, Joan Clarke, דנה לוי"
).split(", ")


class Clock:
    """Simulated time, shared by the engine and the simulator; it moves only when told."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


def leads(count: int) -> list[Lead]:
    """Fictional leads on 555-01xx numbers (reserved for fiction), two of them skipped."""
    out = []
    for i in range(count):
        name = NAMES[i % len(NAMES)] + ("" if i < len(NAMES) else f" {i // len(NAMES) + 1}")
        phone = f"+1212555{100 + i:04d}"
        out.append(Lead(line=i + 2, phone=phone, e164=phone, fields={"name": name, "phone": phone}))
    out.append(Lead(len(out) + 2, "555-12", None, {"name": "Typo", "phone": "555-12"},
                    "invalid-number", "too short"))  # fmt: skip
    return out


def campaign(db: Path, clock: Clock, sim: Simulator, *, count: int, concurrency: int) -> int:
    """Import the leads and dial until about 40% are done with every slot busy."""
    store = Store.open(db)
    run_id = store.create_run(
        source="leads.csv", source_key="readme", leads=leads(count), target=DEFAULT_ACCOUNT_SID,
        base_url=None, from_number=FROM, concurrency=concurrency, settings={}, now=clock(),
    )  # fmt: skip
    pid, host = lease.identity()
    store.take_over(run_id, "readme", pid, host, clock())
    calls = TwilioCalls(DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, sim.url, http_timeout=5)
    params = CallParams(twiml="<Response><Say>Hello</Say></Response>")
    dialer = Dialer(
        store, calls, run_id, "readme", options=Options(poll_interval=1.0),
        rules=Rules(lambda claim: params, lambda to: FROM), clock=clock,
    )  # fmt: skip
    while True:
        if (tick := dialer.tick()).done:
            raise SystemExit(f"run {run_id} ended ({tick.status}) before the picture was taken")
        counts = store.counts(run_id)
        done = counts["completed"] + counts["failed"]
        if done >= 0.4 * count and counts["in_progress"] == concurrency:
            return run_id
        clock.now += 1.0


def draw(db: Path, run_id: int, now: float, width: int, mask: bool) -> Console:
    console = Console(record=True, width=width, file=io.StringIO(), color_system="truecolor")
    store = Store.open(db, readonly=True)
    console.print(render.run_panel(report.live_data(store, run_id, now), mask=mask))
    return console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "status.svg")
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--leads", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--mask", action="store_true", help="mask the phone numbers")
    args = parser.parse_args()
    clock = Clock(datetime(2026, 9, 21, 14, 0, tzinfo=UTC).timestamp())
    with tempfile.TemporaryDirectory() as tmp, Simulator(clock=clock, seed=7) as sim:
        db = Path(tmp) / "dialer.db"
        run_id = campaign(db, clock, sim, count=args.leads, concurrency=args.concurrency)
        console = draw(db, run_id, clock(), args.width, args.mask)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = console.export_text(clear=False)
    console.save_svg(str(args.out), title=f"dialer status {run_id}")
    print(f"{text}wrote {args.out}")


if __name__ == "__main__":
    main()
