"""What one operation asked of the upstream: its cache look-ups and the HTTP requests it sent.

An `UpstreamTally` belongs to one operation (`context_factory.ContextFactory` makes it) and
travels down with it explicitly, as the deadline does:

    loader -> service.list_calls / get_call(..., tally=)
           -> SingleFlightCache.get_or_load(..., tally=)   one look-up, by result
           -> CatapultClient.fetch(..., tally=)            one per HTTP attempt, retries too

The layer that owns the request's record (the HTTP endpoint, or the live operations
for a socket's operation) attaches the context's tally to it before the operation runs,
and the log line reads it when the request ends. Nothing below finds it any other way
(no context variable): a layer counts into the tally it was handed for the operation it
works for, so a task that outlives its request, or serves
another's, cannot count into the wrong line. The Prometheus counters are counted apart
from it, process-wide.
"""

from __future__ import annotations


class UpstreamTally:
    """One operation's upstream-cache look-ups by result and HTTP attempts sent."""

    __slots__ = ("cache", "requests")

    def __init__(self) -> None:
        # "hit", "miss" or "error" (a store that is down reads as a miss, counted so).
        self.cache: dict[str, int] = {}
        # HTTP attempts sent to the upstream, each retry one more: not the distinct asks
        # the loader counts against maxUpstreamRequests (a cache hit sends none).
        self.requests = 0

    def cache_result(self, result: str) -> None:
        """One upstream-cache look-up and its result."""
        self.cache[result] = self.cache.get(result, 0) + 1

    def request_sent(self) -> None:
        """One HTTP attempt handed to the upstream transport."""
        self.requests += 1

    def __repr__(self) -> str:
        return f"UpstreamTally(cache={self.cache!r}, requests={self.requests})"
