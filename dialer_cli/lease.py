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


class NamedLock:
    """An exclusive lock beside the database, released by the OS when its process dies."""

    def __init__(self, db_path: str, name: str):
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        self.path = Path(f"{db_path}.locks") / f"{safe}.lock"
        self._fd: int | None = None

    def acquire(self, busy_message: str) -> None:
        """Take the lock or raise BusyError with the message."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BusyError(busy_message) from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> NamedLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunLock(NamedLock):
    """The one-driver-per-run lock."""

    def __init__(self, db_path: str, run_id: int):
        super().__init__(db_path, f"run-{run_id}")
        self.run_id = run_id

    def acquire_run(self, run: Run | None = None) -> None:
        who = f" (pid {run.owner_pid} on {run.owner_host})" if run and run.owner_pid else ""
        self.acquire(
            f"run {self.run_id} is being driven by another process{who}; "
            f"watch it with `dialer status {self.run_id}`"
        )


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
