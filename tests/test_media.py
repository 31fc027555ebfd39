"""One reading of `Accept`: what it lets the endpoint send (a single answer's type, an
event stream, GraphiQL's page), ranked by `q`, then by position."""

from __future__ import annotations

import pytest

from gateway.media import GRAPHQL_RESPONSE_JSON, JSON, Accepted, accepted, wants_event_stream

URQL = (
    "application/graphql-response+json, application/graphql+json, application/json, "
    "text/event-stream, multipart/mixed"
)
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"


def answer(media: str | None) -> Accepted:
    return Accepted(media, event_stream=False, prefers_event_stream=False, prefers_page=False)


def stream(media: str | None, *, preferred: bool) -> Accepted:
    return Accepted(media, event_stream=True, prefers_event_stream=preferred, prefers_page=False)


def page(media: str | None) -> Accepted:
    return Accepted(media, event_stream=False, prefers_event_stream=False, prefers_page=True)


# (Accept header lines, what they accept)
ACCEPTS = [
    pytest.param([], answer(JSON), id="no-accept-is-json"),
    pytest.param([""], answer(JSON), id="empty-accept-is-json"),
    pytest.param(["application/json"], answer(JSON), id="json"),
    pytest.param([GRAPHQL_RESPONSE_JSON], answer(GRAPHQL_RESPONSE_JSON), id="graphql-json"),
    pytest.param(["*/*"], answer(JSON), id="wildcard-is-json"),
    pytest.param(["application/*"], answer(JSON), id="application-wildcard-is-json"),
    pytest.param(
        [f"application/json;q=0.5, {GRAPHQL_RESPONSE_JSON}"],
        answer(GRAPHQL_RESPONSE_JSON),
        id="higher-q-wins",
    ),
    pytest.param([f"{GRAPHQL_RESPONSE_JSON};q=0, */*"], answer(JSON), id="q-zero-refuses"),
    pytest.param(["text/csv"], answer(None), id="nothing-served"),
    pytest.param(["application/json;q=0"], answer(None), id="json-refused"),
    pytest.param(["text/csv", "application/json"], answer(JSON), id="every-line-read"),
    pytest.param(["text/event-stream"], stream(None, preferred=True), id="graphql-sse"),
    pytest.param([URQL], stream(GRAPHQL_RESPONSE_JSON, preferred=False), id="urql-json-first"),
    pytest.param(
        ["application/json;q=0.5, text/event-stream"],
        stream(JSON, preferred=True),
        id="stream-higher-q",
    ),
    pytest.param(
        ["text/event-stream, application/json"], stream(JSON, preferred=True), id="stream-first"
    ),
    pytest.param(["text/event-stream;q=0, application/json"], answer(JSON), id="stream-q-zero"),
    pytest.param(["text/event-stream;q=x"], answer(None), id="unreadable-q-is-zero"),
    pytest.param(
        ["application/json", "text/event-stream"], stream(JSON, preferred=False), id="two-lines"
    ),
    pytest.param(["*/*, text/event-stream"], stream(JSON, preferred=False), id="wildcard-first"),
    pytest.param(["TEXT/Event-Stream"], stream(None, preferred=True), id="any-case"),
    pytest.param(["text/event-streamx"], answer(None), id="stream-prefix-is-not-a-stream"),
    pytest.param([BROWSER], page(JSON), id="browser"),
    pytest.param(["text/html;q=0, application/json"], answer(JSON), id="html-refused"),
    pytest.param(["application/json, text/html"], answer(JSON), id="html-after-json"),
    pytest.param(
        ["text/html, text/event-stream"],
        Accepted(None, event_stream=True, prefers_event_stream=True, prefers_page=True),
        id="html-and-stream-rank-against-the-answers-only",
    ),
]


@pytest.mark.parametrize(("accept", "expected"), ACCEPTS)
def test_accept_is_ranked_by_q_then_position(accept: list[str], expected: Accepted) -> None:
    assert accepted(accept) == expected
    # The answer cache's question, with its short cut for lines that never name a stream.
    assert wants_event_stream(accept) is expected.event_stream
