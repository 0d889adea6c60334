"""One driver per run: an OS file lock that dies with its process.

`kill -9` releases a flock at once, so a resume right after a crash takes over immediately,
while a second live driver is refused at once. The database records who holds it (pid, host,
heartbeat) for the message and for `status`; the lock itself is the authority.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from dialer_cli.errors import BusyError, StoreError
from dialer_cli.models import Run


class RunLock:
    def __init__(self, db_path: str, run_id: int):
        self.path = Path(f"{db_path}.locks") / f"run-{run_id}.lock"
        self.run_id = run_id
        self._fd: int | None = None

    def acquire(self, run: Run | None = None) -> None:
        """Take the lock or raise BusyError naming the process that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            who = f" (pid {run.owner_pid} on {run.owner_host})" if run and run.owner_pid else ""
            raise BusyError(
                f"run {self.run_id} is being driven by another process{who}; "
                f"watch it with `dialer status {self.run_id}`"
            ) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def driver_alive(run: Run, now: float, stale_after: float = 60.0) -> bool:
    """Whether some process is driving the run right now (for `status` and `stop`)."""
    if run.owner_pid is None or run.heartbeat_at is None:
        return False
    if run.owner_host != socket.gethostname():
        return now - run.heartbeat_at < stale_after
    try:
        os.kill(run.owner_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return now - run.heartbeat_at < stale_after


def identity() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()
