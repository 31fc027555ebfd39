"""A pacing schedule shared by the processes of one host through a small locked file.

`serve --workers N` runs N processes that each pace on their own unless something is
shared; without Redis that something is this file (`GATEWAY_PACING_FILE`, which the CLI
sets to a fresh private directory of its process group). It holds each account's next
free slot and last departure (keyed by the account's HMAC, never a credential) as a small
JSON object; a reservation or departure reads, updates and writes it under an exclusive
`flock`, so the workers together keep one account to the rate, as the Redis schedule
does for replicas.

The lock is held for a read and a write of a few hundred bytes (microseconds), so it is
taken on the event loop rather than in a thread, which would cost more than the wait.
The clock is `CLOCK_MONOTONIC`, one clock for every process of the host. A file that
cannot be used reads as "unreachable": the caller paces alone, as without Redis.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("gateway.pacing")

# Past slots are dropped when the table grows beyond this many accounts.
MAX_ACCOUNTS = 10_000


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
        except (OSError, ValueError, TypeError) as exc:
            if not self._failed:
                self._failed = True
                log.warning(
                    "pacing file unusable; this process paces on its own",
                    extra={"error": type(exc).__name__},
                )
            return None

    def _update(self, account: str, change: Callable[[list[float], float], float]) -> float:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        fd = self._fd
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            table = _read(fd)
            now = time.monotonic()
            # [next free slot, last departure], both on the monotonic clock.
            stored = table.get(account)
            entry = [float(stored[0]), float(stored[1])] if stored else [0.0, 0.0]
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


def _read(fd: int) -> dict[str, Any]:
    size = os.fstat(fd).st_size
    if size == 0:
        return {}
    table = orjson.loads(os.pread(fd, size, 0))
    return table if isinstance(table, dict) else {}
