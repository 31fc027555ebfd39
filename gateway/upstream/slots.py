"""A pacing schedule shared by the processes of one host through a small locked file.

`serve --workers N` runs N processes that each pace on their own unless something is
shared; without Redis that something is this file (`GATEWAY_PACING_FILE`, which the CLI
sets to a fresh private directory of its process group). It holds each account's next
free slot and last departure (keyed by the account's HMAC, never a credential) as a small
JSON object; a reservation or departure reads, updates and writes it under an exclusive
`flock`, so the workers together keep one account to the rate, as the Redis schedule
does for replicas.

The lock is held for a read and a write of a few hundred bytes (microseconds), so it is
taken on the event loop rather than in a thread, which would cost more than the wait; it
is only ever tried for `LOCK_WAIT` seconds, so a process that holds it (or a stranger who
planted the file) cannot stall the event loop. The clock is `CLOCK_MONOTONIC`, one clock
for every process of the host. The file is trusted only as far as it must be: it is never
opened through a symbolic link, must be a regular file of this user that nobody else may
write, an entry that is not two plausible times reads as empty, and an unreadable table is
rewritten. A file that cannot be used reads as "unreachable": the caller paces alone, as
without Redis.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("gateway.pacing")

# Past slots are dropped when the table grows beyond this many accounts.
MAX_ACCOUNTS = 10_000
# Longest the event loop tries for the lock, and how far from now a stored time may be.
LOCK_WAIT = 0.02
PLAUSIBLE_SECONDS = 3600.0


class FileSlots:
    """The `pacing.SharedSlots` of the processes that share `path`."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._fd: int | None = None
        self._failed = False

    async def reserve(self, account: str, interval: float, max_wait: float) -> float | None:
        """Seconds until the account's next slot, reserved only if within `max_wait`;
        None when the file cannot be used."""

        def reserve(entry: list[float], now: float) -> float:
            slot = max(now, entry[0])
            wait = slot - now
            if wait <= max_wait:
                entry[0] = slot + interval
            return wait  # past max_wait: not reserved, the caller refuses it

        return self._locked(account, reserve)

    async def depart(self, account: str, interval: float) -> float | None:
        """Record a departure now and return 0, or the seconds still to wait for the
        account's previous departure to be `interval` old; None when unusable."""

        def depart(entry: list[float], now: float) -> float:
            if entry[1] > 0 and now < entry[1] + interval:
                return entry[1] + interval - now
            entry[1] = now
            # Later reservations start one interval after this departure at the earliest.
            entry[0] = max(entry[0], now + interval)
            return 0.0

        return self._locked(account, depart)

    def _locked(self, account: str, change: Callable[[list[float], float], float]) -> float | None:
        try:
            return self._update(account, change)
        except (OSError, ValueError, TypeError, BlockingIOError) as exc:
            if not self._failed:
                self._failed = True
                log.warning(
                    "pacing file unusable; this process paces on its own",
                    extra={"error": type(exc).__name__},
                )
            return None

    def _update(self, account: str, change: Callable[[list[float], float], float]) -> float:
        if self._fd is None:
            self._fd = _open_private(self._path)
        fd = self._fd
        _lock(fd)
        try:
            table = _read(fd)
            now = time.monotonic()
            # [next free slot, last departure], both on the monotonic clock.
            entry = _entry(table.get(account), now)
            result = change(entry, now)
            table[account] = entry
            if len(table) > MAX_ACCOUNTS:
                table = {key: e for key, e in table.items() if max(e) + 60 > now}
            data = orjson.dumps(table)
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            return result
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_private(path: str) -> int:
    """Open (or create) the file, refusing a link, a non-file or one others may write."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        os.close(fd)
        raise PermissionError(f"{path} is not a private regular file of this user")
    return fd


def _lock(fd: int) -> None:
    """Take the exclusive lock, trying for at most `LOCK_WAIT` seconds."""
    give_up = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= give_up:
                raise
            time.sleep(0.001)


def _entry(stored: Any, now: float) -> list[float]:
    """[next slot, last departure] as stored, or empty when they are not plausible times."""
    if isinstance(stored, list) and len(stored) == 2:
        try:
            entry = [float(stored[0]), float(stored[1])]
        except (TypeError, ValueError):
            return [0.0, 0.0]
        if all(value == 0.0 or abs(value - now) <= PLAUSIBLE_SECONDS for value in entry):
            return entry
    return [0.0, 0.0]


def _read(fd: int) -> dict[str, Any]:
    """The table; one that cannot be read (cut off, or planted) is started again."""
    size = os.fstat(fd).st_size
    if size == 0:
        return {}
    try:
        table = orjson.loads(os.pread(fd, min(size, 4 * 1024 * 1024), 0))
    except orjson.JSONDecodeError:
        return {}
    return table if isinstance(table, dict) else {}
