"""Whether a request asks for an event stream: accepted at all, or preferred."""

from __future__ import annotations

import pytest

from gateway.media import prefers_event_stream, wants_event_stream

URQL = (
    "application/graphql-response+json, application/graphql+json, application/json, "
    "text/event-stream, multipart/mixed"
)

# (Accept header lines, accepts a stream, prefers a stream)
ACCEPTS = [
    pytest.param([], False, False, id="no-accept"),
    pytest.param(["text/event-stream"], True, True, id="graphql-sse"),
    pytest.param([URQL], True, False, id="urql-lists-json-first"),
    pytest.param(["application/json;q=0.5, text/event-stream"], True, True, id="higher-q"),
    pytest.param(["text/event-stream;q=0, application/json"], False, False, id="q-zero"),
    pytest.param(["text/event-stream;q=x"], False, False, id="unreadable-q-is-zero"),
    pytest.param(["application/json", "text/event-stream"], True, False, id="two-lines"),
    pytest.param(["*/*, text/event-stream"], True, False, id="wildcard-first"),
    pytest.param(["TEXT/Event-Stream"], True, True, id="any-case"),
    pytest.param(["text/html, text/event-stream"], True, True, id="only-stream-answers"),
]


@pytest.mark.parametrize(("accept", "accepts", "prefers"), ACCEPTS)
def test_accept_is_ranked_by_q_then_position(
    accept: list[str], accepts: bool, prefers: bool
) -> None:
    assert wants_event_stream(accept) is accepts
    assert prefers_event_stream(accept) is prefers
