"""`dialer` on a shared, faster clock: for the explorer (tests/explore.py) only.

    DIALER_TEST_CLOCK="BASE REAL0 SPEED" python -m tests.clock_entry start leads.csv ...

runs `dialer_cli.cli:main` exactly as `python -m dialer_cli` does, except that `time.time()`
returns BASE + (real now - REAL0) × SPEED and `time.sleep(s)` sleeps s / SPEED real seconds. The
explorer's simulator uses the same formula, so the dialer processes and "Twilio" agree on a clock
in which an hour of calling hours passes in a minute and the heartbeat's 60 s staleness in one
second. The patch happens before dialer_cli is imported, so defaults bound at import time
(`runner.drive(clock=time.time)`) see it too. Nothing in dialer_cli knows about this.
"""

from __future__ import annotations

import os
import sys
import time

ENV = "DIALER_TEST_CLOCK"


def shared_clock(spec: str) -> tuple[float, float, float]:
    """(base, real0, speed) from the environment variable's value."""
    base, real0, speed = (float(part) for part in spec.split())
    return base, real0, speed


def install(spec: str) -> None:
    """Replace time.time and time.sleep with the shared clock's."""
    base, real0, speed = shared_clock(spec)
    real_time, real_sleep = time.time, time.sleep

    def now() -> float:
        return base + (real_time() - real0) * speed

    def sleep(seconds: float) -> None:
        real_sleep(max(seconds, 0.0) / speed)

    time.time = now
    time.sleep = sleep


def main() -> None:
    spec = os.environ.get(ENV)
    if spec:
        install(spec)
    from dialer_cli.cli import main as dialer_main

    sys.argv[0] = "dialer"
    dialer_main()


if __name__ == "__main__":
    main()
