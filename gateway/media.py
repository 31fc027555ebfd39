"""The one reading of whether a request asks for an event stream, for the endpoint, the
event streams and the whole-answer cache (no other imports: below all three; inside the
live package it made the middleware and the live packages import each other).

Clients list several media types: graphql-sse's sends `text/event-stream` alone, urql's
`fetch` sends `application/graphql-response+json, application/graphql+json,
application/json, text/event-stream, multipart/mixed` for every operation. A single
answer is served as an event stream only when the stream is what the client prefers
(the highest `q`, then the earliest listed, as the endpoint ranks its JSON types), or
when the operation is a subscription and the client accepts a stream at all.
"""

from __future__ import annotations

from collections.abc import Sequence

EVENT_STREAM = "text/event-stream"
# The single-answer types the endpoint serves (and the wildcards that reach them).
_ANSWERS = frozenset(
    {"application/graphql-response+json", "application/json", "application/*", "*/*"}
)


def _ranked(accept_values: Sequence[str]) -> list[tuple[float, int, str]]:
    """(q, -position, media type) of every acceptable item; unreadable `q` is 0."""
    ranked: list[tuple[float, int, str]] = []
    position = 0
    for value in accept_values:
        for item in value.split(","):
            media, *params = (part.strip() for part in item.split(";"))
            position += 1
            quality = 1.0
            for param in params:
                key, _, number = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        quality = float(number)
                    except ValueError:
                        quality = 0.0
            if quality > 0:
                ranked.append((quality, -position, media.lower()))
    return ranked


def wants_event_stream(accept_values: Sequence[str]) -> bool:
    """Whether `Accept` accepts an event stream at all (with a `q` above 0)."""
    # Asked of every request to /graphql (the endpoint and the answer cache both ask):
    # an Accept that never names the type is answered without parsing its items.
    if not any(EVENT_STREAM in value.lower() for value in accept_values):
        return False
    return any(media == EVENT_STREAM for _, _, media in _ranked(accept_values))


def prefers_event_stream(accept_values: Sequence[str]) -> bool:
    """Whether an event stream ranks above every single-answer type `Accept` lists."""
    ranked = [entry for entry in _ranked(accept_values) if entry[2] in _ANSWERS | {EVENT_STREAM}]
    return bool(ranked) and max(ranked)[2] == EVENT_STREAM
