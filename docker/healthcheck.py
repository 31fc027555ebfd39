"""The image's HEALTHCHECK: the health route on the port the entrypoint actually listens on.

It reads the port from the kernel, not from a setting, so `--port`, `GATEWAY_PORT` and the
default all work: the listening TCP sockets that process HEALTHCHECK_PID (default 1, the
container's entrypoint) holds open, as /proc lists them. The image runs either command:
`serve` answers /healthz, `sandbox` (the standalone upstream) /__health. Standard library
only; exit 0 when one of them answers one of those with 200, else 1.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

LISTEN = "0A"
# `catapult-gateway serve`'s liveness route, then `catapult-gateway sandbox`'s.
HEALTH_PATHS = ("/healthz", "/__health")


def socket_inodes(pid: str) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening(pid: str) -> list[tuple[str, int]]:
    """(host to probe, port) of each listening TCP socket `pid` holds."""
    inodes = socket_inodes(pid)
    found = []
    for table, loopback in (("tcp", "127.0.0.1"), ("tcp6", "[::1]")):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != LISTEN or fields[9] not in inodes:
                continue
            address, port = fields[1].split(":")
            host = loopback
            if table == "tcp" and address != "00000000":
                host = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
            found.append((host, int(port, 16)))
    return found


def main() -> int:
    for host, port in listening(os.environ.get("HEALTHCHECK_PID", "1")):
        for path in HEALTH_PATHS:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=2) as answer:
                    if answer.status == 200:
                        return 0
            except OSError:
                continue
    return 1


if __name__ == "__main__":
    sys.exit(main())
