"""Memory of a child process, from /proc: what it holds now and its peak since a reset.

Measured in the gateway's own process (started with `tests.servers.gateway_process`),
never in the test process, whose memory holds the test's own data.
"""

from __future__ import annotations

from pathlib import Path

MIB = 1 << 20


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0]) * 1024  # kB
    raise LookupError(f"{field} is not in /proc/{pid}/status")


def rss(pid: int) -> int:
    """Resident bytes now (VmRSS)."""
    return _status(pid, "VmRSS")


def peak_rss(pid: int) -> int:
    """The most resident bytes since the process started or `reset_peak` (VmHWM)."""
    return _status(pid, "VmHWM")


def reset_peak(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux: `5` to /proc/<pid>/clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
