"""The one reading of a request's `Accept`, for the endpoint, the event streams and the
whole-answer cache (no other imports: below all three; inside the live package it made
the middleware and the live packages import each other).

Every question about `Accept` is answered from one ranking: the media types listed with a
`q` above 0 (an unreadable `q` is 0), the highest `q` first, then the earliest listed,
over every `Accept` line. Clients list several types: graphql-sse's sends
`text/event-stream` alone, urql's `fetch` sends `application/graphql-response+json,
application/graphql+json, application/json, text/event-stream, multipart/mixed` for
every operation and must get JSON for a query. A single answer is served as an event
stream only when the stream ranks above every single-answer type, or when the operation
is a subscription and the client accepts a stream at all; GraphiQL's page only when
`text/html` ranks above them (a browser's navigation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

EVENT_STREAM = "text/event-stream"
GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"
HTML = "text/html"
# The single-answer types the endpoint serves, and the wildcards that reach them (a
# wildcard is answered as plain JSON, which every client reads).
_ANSWERS = {
    GRAPHQL_RESPONSE_JSON: GRAPHQL_RESPONSE_JSON,
    JSON: JSON,
    "application/*": JSON,
    "*/*": JSON,
}


@dataclass(frozen=True, slots=True)
class Accepted:
    """What a request's `Accept` lets the endpoint send it."""

    # The single-answer type to send; None when the client accepts none (406).
    answer: str | None
    # An event stream is acceptable (for a subscription), or preferred (for any operation).
    event_stream: bool
    prefers_event_stream: bool
    # `text/html` ranks above the single-answer types: GraphiQL's page, for a GET.
    prefers_page: bool


# No `Accept` at all (or only empty lines): plain JSON, as legacy clients expect.
_UNSTATED = Accepted(
    answer=JSON, event_stream=False, prefers_event_stream=False, prefers_page=False
)
# A single-answer type alone.
_ALONE = {
    media: Accepted(answer, event_stream=False, prefers_event_stream=False, prefers_page=False)
    for media, answer in _ANSWERS.items()
}


def accepted(accept_values: Sequence[str]) -> Accepted:
    """Read the `Accept` lines of one request (`Headers.getlist("accept")`)."""
    # No Accept, or one type alone as most clients send it: looked up, not ranked (on
    # every request the answer cache does not answer).
    if not accept_values:
        return _UNSTATED
    if len(accept_values) == 1:
        known = _ALONE.get(accept_values[0])
        if known is not None:
            return known
    ranked = _ranked(accept_values)
    if not ranked and not any(value.strip() for value in accept_values):
        return _UNSTATED
    answer = stream = page = None
    for position, media in enumerate(ranked):
        if answer is None and media in _ANSWERS:
            answer = (position, _ANSWERS[media])
        elif stream is None and media == EVENT_STREAM:
            stream = position
        elif page is None and media == HTML:
            page = position
    # Positions in the ranking: lower is preferred; anything absent ranks last.
    last = len(ranked)
    answer_at = last if answer is None else answer[0]
    return Accepted(
        answer=None if answer is None else answer[1],
        event_stream=stream is not None,
        prefers_event_stream=stream is not None and stream < answer_at,
        prefers_page=page is not None and page < answer_at,
    )


def wants_event_stream(accept_values: Sequence[str]) -> bool:
    """Whether `Accept` accepts an event stream at all (with a `q` above 0)."""
    # Asked of every request to /graphql by the answer cache, on its hit path: an Accept
    # that never names the type is answered without ranking (or allocating) anything.
    if not any(EVENT_STREAM in value.lower() for value in accept_values):
        return False
    return EVENT_STREAM in _ranked(accept_values)


def _ranked(accept_values: Sequence[str]) -> list[str]:
    """The acceptable media types, lower-cased, the client's preference first."""
    entries: list[tuple[float, int, str]] = []
    position = 0
    for value in accept_values:
        for item in value.split(","):
            media, *params = (part.strip() for part in item.split(";"))
            position += 1
            if not media:
                continue
            quality = 1.0
            for param in params:
                key, _, number = param.partition("=")
                if key.strip().lower() == "q":
                    try:
                        quality = float(number)
                    except ValueError:
                        quality = 0.0
            if quality > 0:
                entries.append((quality, -position, media.lower()))
    entries.sort(reverse=True)
    return [media for _, _, media in entries]
