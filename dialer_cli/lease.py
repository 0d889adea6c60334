"""One driver per run, one dialer per campaign: byte-range locks in ONE file beside the database.

The locks are Linux open-file-description locks (`F_OFD_SETLK`): the OS releases them when their
process dies (`kill -9` included), so a resume right after a crash takes over at once; they
belong to the open file, not to the process, so a second open of the same file elsewhere in the
process does not release them (as it would a POSIX `lockf`); and `F_OFD_GETLK` tells whether
another holder exists without taking the lock, which is how `stop` and `status` know that a
driver is alive even while it is stalled (SIGSTOP, one slow pass) and its heartbeat is old.

The lock file is found from the database's real path, so every spelling of it (a symlink, a
relative path, `./x/../x.db`) locks the same bytes. Each lock name (`run-7`, `campaign-nightly`)
is one byte at an offset derived from the name, so one file serves every run and campaign and
nothing piles up. The database records who holds a run (pid, host, heartbeat) for messages and
for a driver on another host; on this host the lock itself is the authority.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import struct
from pathlib import Path

from dialer_cli.errors import BusyError, StoreError
from dialer_cli.models import Run

FLOCK = "hhqqi4x"  # struct flock on 64-bit Linux: l_type, l_whence, l_start, l_len, l_pid


def lock_path(db_path: str | Path) -> Path:
    """The one lock file of a database, named after its real path (symlinks resolved)."""
    return Path(os.path.realpath(db_path) + ".lock")


def _flock(kind: int, name: str) -> bytes:
    """The one byte that stands for `name` (a 56-bit hash: collisions are not a concern)."""
    offset = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=7).digest(), "big")
    return struct.pack(FLOCK, kind, os.SEEK_SET, offset, 1, 0)


def is_locked(db_path: str | Path, name: str) -> bool:
    """Whether some open file (another process, or another open in this one) holds the lock.

    Reads only: the lock file is not created, and the lock is not taken even for an instant.
    """
    try:
        fd = os.open(lock_path(db_path), os.O_RDONLY)
    except FileNotFoundError:
        return False  # nobody has ever locked anything in this database
    except OSError as exc:
        raise StoreError(f"cannot read lock file {lock_path(db_path)}: {exc.strerror}") from None
    try:
        answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, name))
    finally:
        os.close(fd)
    return struct.unpack(FLOCK, answer)[0] != fcntl.F_UNLCK


class NamedLock:
    """An exclusive lock on one name of a database, released by the OS when its process dies."""

    def __init__(self, db_path: str | Path, name: str):
        self.path = lock_path(db_path)
        self.name = name
        self._fd: int | None = None

    def acquire(self, busy_message: str) -> None:
        """Take the lock or raise BusyError with the message."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot create lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, self.name))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise BusyError(busy_message) from None
            raise StoreError(f"cannot lock {self.path}: {exc.strerror}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the open file drops its locks
            self._fd = None

    def __enter__(self) -> NamedLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def run_lock_name(run_id: int) -> str:
    return f"run-{run_id}"


class RunLock(NamedLock):
    """The one-driver-per-run lock."""

    def __init__(self, db_path: str | Path, run_id: int):
        super().__init__(db_path, run_lock_name(run_id))
        self.run_id = run_id

    def acquire_run(self, run: Run | None = None) -> None:
        who = f" (pid {run.owner_pid} on {run.owner_host})" if run and run.owner_pid else ""
        self.acquire(
            f"run {self.run_id} is being driven by another process{who}; "
            f"watch it with `dialer status {self.run_id}`"
        )


def driver_alive(db_path: str | Path, run: Run, now: float, stale_after: float = 60.0) -> bool:
    """Whether some process is driving the run right now (for `status` and `stop`)."""
    host = run.owner_host if run.owner_pid is not None else None
    return driven(db_path, run.id, host, run.heartbeat_at, now, stale_after)


def driven(
    db_path: str | Path,
    run_id: int,
    host: str | None,
    heartbeat_at: float | None,
    now: float,
    stale_after: float = 60.0,
) -> bool:
    """The run's lock decides: a driver that is stalled (SIGSTOP, a pass slower than a minute)
    still holds it and will still act on a stop, and still dials once it wakes. Only a driver
    recorded on another host, whose lock this host may not see, is judged by the age of its
    heartbeat."""
    if is_locked(db_path, run_lock_name(run_id)):
        return True
    if heartbeat_at is None or host in (None, socket.gethostname()):
        return False
    return now - heartbeat_at < stale_after


def identity() -> tuple[int, str]:
    return os.getpid(), socket.gethostname()
