"""The one reading of whether a request asks for an event stream (no other imports, so
that the whole-answer cache can ask it too without importing the live transports)."""

from __future__ import annotations

from collections.abc import Sequence

EVENT_STREAM = "text/event-stream"


def wants_event_stream(accept_values: Sequence[str]) -> bool:
    """Whether `Accept` asks for an event stream (graphql-sse's client sends exactly that)."""
    for value in accept_values:
        for item in value.split(","):
            media, *params = (part.strip() for part in item.split(";"))
            if media.lower() != EVENT_STREAM:
                continue
            quality = next(
                (p.partition("=")[2].strip() for p in params if p.lower().startswith("q=")),
                "1",
            )
            try:
                if float(quality) > 0:
                    return True
            except ValueError:
                continue
    return False
