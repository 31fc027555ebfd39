"""What a file must be to hold the pacing table the processes of one host share, for the
settings (said at start-up, naming GATEWAY_PACING_FILE) and the pacer (at each open).

A module of its own, below both: in `upstream.pacing` it made the settings import the
upstream package (Redis, the cache, the client's errors) to read one rule, and the rule
was written twice, once in each.
"""

from __future__ import annotations

import os
import stat


def unfit(info: os.stat_result) -> str | None:
    """Why a file with `info` (not following a link) must not hold the table, or None.

    A file others may write lets them plant a schedule; one the pacer refuses leaves every
    worker pacing alone, N workers sending N requests a second.
    """
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        return "must be a regular file of the user running the gateway"
    if info.st_mode & 0o022:
        return "must not be writable by others or the group (chmod 600)"
    return None


def holds_a_pacing_table(first_byte: bytes) -> bool:
    """Whether a file starting with `first_byte` may be a pacing table (or empty).

    The table is one JSON object, rewritten whole at every reservation; a write cut off
    by a crash still starts with `{` (and is started again), whereas a mistyped path to
    some other file of the user must not have that file overwritten. Checked at start-up;
    once running, whatever the file holds is the table, started again when it cannot be
    read.
    """
    return first_byte in (b"", b"{")
