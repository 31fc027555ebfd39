"""Odd but legal upstream answers: each one is simply read, the same way on both paths.

Issue 13 collected what real upstreams send and the gateway's own tests never did (from
`docs/upstream.md` and public bug reports of other REST gateways): RFC 8288 `Link`
spellings, a UTF-8 byte order mark, RFC 3339 in lower case, values outside the documented
enums. Each row is sent through a gateway with the compiled path and one without, as a
`calls` page (the compiled path's shape) and a `callsConnection` walk (which follows the
`Link` header); both must give the same bytes, nothing in `errors`, and exactly the
expected `extensions.warnings`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from graphql import get_operation_ast, parse

from gateway.calls import CallList, ListQuery, parse_call_list, within_size
from gateway.context import Context
from gateway.fastpath import compile_plan
from gateway.pagination import CursorCodec
from gateway.sandbox import credential_headers
from gateway.schema import build_schema, graphql_core_schema
from gateway.upstream.tally import UpstreamTally
from tests.conftest import DEMO, PathPair, path_pair
from tests.fakes import FakeUpstream
from tests.fakes import upstream_call as call  # short: the cases below are tables

CALLS_PATH = f"/v1/users/{DEMO.user_id}/calls/"
FIELDS = "id state direction startTime endTime callbackHttpMethod bridgeId sipHeaders { name }"
# `first: 3` asks the upstream for pages of 3; `calls(size: 3)` makes the same first request.
CALLS = f"query($filter: CallFilter) {{ calls(size: 3, filter: $filter) {{ {FIELDS} }} }}"
CONNECTION = (
    "query($filter: CallFilter) { callsConnection(first: 3, filter: $filter) "
    f"{{ edges {{ node {{ {FIELDS} }} }} pageInfo {{ hasNextPage }} }} }}"
)
BOM = b"\xef\xbb\xbf"
NEXT = "{base}" + CALLS_PATH.rstrip("/") + "?page=1&size=3&sortOrder=desc"


@dataclass(frozen=True)
class Case:
    """Two upstream pages (page 0 with its `Link` lines, page 1 without) and what to expect."""

    first_page: Any = field(default_factory=lambda: [call("c-1"), call("c-2")])
    links: tuple[str, ...] = (f'<{NEXT}>; rel="next"',)
    second_page: Any = field(default_factory=lambda: [call("c-3")])
    filter: dict[str, str] | None = None
    # What the gateway must answer: ids of the `calls` page and of the connection walk,
    # whether the walk says there is more, and (path, callId) of every warning.
    calls: tuple[str, ...] = ("c-1", "c-2")
    walk: tuple[str, ...] = ("c-1", "c-2", "c-3")
    has_next: bool = False
    warnings: tuple[tuple[tuple[str | int, ...], str | None], ...] = ()
    connection_warnings: tuple[tuple[tuple[str | int, ...], str | None], ...] | None = None
    # Field values the first call must have, on both roots.
    first_call: dict[str, Any] = field(default_factory=dict)


SIP_FROM = "sip:ann,bob@example.com"
CASES = [
    # -- Link spellings (RFC 8288) and targets (RFC 3986) --------------------------------
    pytest.param(
        Case(links=(f'<{NEXT}>; title="next page, please"; rel="next"',)),
        id="link-comma-in-quoted-param",
    ),
    pytest.param(
        Case(
            filter={"from": SIP_FROM},
            links=(
                "<{base}"
                + CALLS_PATH
                + f'?from={SIP_FROM}&page=1&size=3&sortOrder=desc>; rel="next"',
            ),
        ),
        id="link-comma-in-target",
    ),
    pytest.param(
        Case(links=(f'<{CALLS_PATH.rstrip("/")}?page=1&size=3&sortOrder=desc>; rel="next"',)),
        id="link-relative-target",
    ),
    pytest.param(
        Case(links=('<?page=1&size=3&sortOrder=desc>; rel="next"',)), id="link-query-only"
    ),
    pytest.param(Case(links=(f'<{NEXT}>; rel="next last"',)), id="link-several-relations"),
    pytest.param(Case(links=(f"<{NEXT}>;rel=next",)), id="link-unquoted-rel"),
    pytest.param(
        Case(links=(f'  <{NEXT}>  ;   REL = "Next"  ,  ',)), id="link-whitespace-and-case"
    ),
    pytest.param(
        Case(
            links=("<{base}" + CALLS_PATH + '?page=0&size=3>; rel="first"', f'<{NEXT}>; rel="next"')
        ),
        id="link-several-header-lines",
    ),
    pytest.param(
        Case(
            links=(
                "<{base_upper}/v1/users/%75-demo/./calls/../calls/?page=1&size=3&sortOrder=DESC>"
                '; rel="next"',
            )
        ),
        id="link-rfc3986-equivalent",
    ),
    pytest.param(
        Case(
            filter={"from": "+19195551212"},
            links=(
                "<{base}"
                + CALLS_PATH
                + '?from=+19195551212&page=1&size=3&sortOrder=desc>; rel="next"',
            ),
        ),
        id="link-plus-sign-unencoded",
    ),
    # -- bodies and values ---------------------------------------------------------------
    pytest.param(Case(first_page=BOM + orjson.dumps([call("c-1"), call("c-2")])), id="utf8-bom"),
    pytest.param(
        Case(
            first_page=[
                call("c-1", startTime="2013-02-08t13:15:47.587z", endTime="2013-02-08t13:16:47z"),
                call("c-2"),
            ],
            first_call={
                "startTime": "2013-02-08T13:15:47.587Z",
                "endTime": "2013-02-08T13:16:47.000Z",
            },
        ),
        id="rfc3339-lower-case",
    ),
    pytest.param(
        Case(
            first_page=[call("c-1", startTime="2013-07-12T15:54:47-02"), call("c-2")],
            first_call={"startTime": "2013-07-12T17:54:47.000Z"},
        ),
        id="hour-only-offset",
    ),
    pytest.param(
        Case(
            first_page=[
                call("c-1", endTime=None, bridgeId=None, callbackHttpMethod=None, sipHeaders=None),
                call("c-2"),
            ],
            first_call={"endTime": None, "bridgeId": None, "sipHeaders": []},
        ),
        id="null-for-omitted",
    ),
    pytest.param(
        Case(
            first_page=[
                call("c-1", callTimeout=30, recordings="https://x/r", future={"a": [1]}),
                call("c-2"),
            ]
        ),
        id="unknown-extra-fields",
    ),
    pytest.param(Case(first_page=[], calls=(), walk=("c-3",)), id="empty-array-with-next-link"),
    pytest.param(
        Case(
            first_page=[call("c-1", state="error"), call("c-2", state="ERROR")],
            first_call={"state": "ERROR"},
        ),
        id="error-state",
    ),
    pytest.param(
        Case(
            first_page=[
                call("c-1", callbackHttpMethod="get"),
                call("c-2", callbackHttpMethod="post"),
            ],
            first_call={"callbackHttpMethod": "GET"},
        ),
        id="lower-case-callback-method",
    ),
    # -- tolerated, with a warning ---------------------------------------------------------
    pytest.param(
        Case(
            first_page=[call("c-1", state="queued"), call("c-2")],
            first_call={"state": "UNKNOWN"},
            warnings=((("calls", 0, "state"), "c-1"),),
            connection_warnings=((("callsConnection", "edges", 0, "node", "state"), "c-1"),),
        ),
        id="unknown-state",
    ),
    pytest.param(
        Case(
            first_page=[call("c-1", direction="forwarded"), call("c-2")],
            first_call={"direction": "UNKNOWN"},
            warnings=((("calls", 0, "direction"), "c-1"),),
            connection_warnings=((("callsConnection", "edges", 0, "node", "direction"), "c-1"),),
        ),
        id="unknown-direction",
    ),
    pytest.param(
        Case(
            first_page=[call("c-1", callbackHttpMethod="PUT"), call("c-2")],
            first_call={"callbackHttpMethod": None},
            warnings=((("calls", 0, "callbackHttpMethod"), "c-1"),),
            connection_warnings=(
                (("callsConnection", "edges", 0, "node", "callbackHttpMethod"), "c-1"),
            ),
        ),
        id="unknown-callback-method",
    ),
    pytest.param(
        Case(
            first_page=[call("c-1", endTime="yesterday", sipHeaders="X-A: b"), call("c-2")],
            first_call={"endTime": None, "sipHeaders": []},
            warnings=((("calls", 0, "endTime"), "c-1"), (("calls", 0, "sipHeaders"), "c-1")),
            connection_warnings=(
                (("callsConnection", "edges", 0, "node", "endTime"), "c-1"),
                (("callsConnection", "edges", 0, "node", "sipHeaders"), "c-1"),
            ),
        ),
        id="malformed-optional-fields",
    ),
    pytest.param(
        Case(
            first_page=[
                call("c-1"),
                {k: v for k, v in call("x").items() if k != "id"},
                call("c-2"),
            ],
            warnings=((("calls",), None),),
            connection_warnings=((("callsConnection",), None),),
        ),
        id="record-missing-id",
    ),
    pytest.param(
        Case(
            links=('<https://elsewhere.example/v1/users/u-demo/calls?page=1&size=3>; rel="next"',),
            walk=("c-1", "c-2"),
            connection_warnings=((("callsConnection",), None),),
        ),
        id="link-off-origin-is-served-not-followed",
    ),
    pytest.param(
        Case(
            links=(f'<{NEXT}&debug=1>; rel="next"',),
            walk=("c-1", "c-2"),
            connection_warnings=((("callsConnection",), None),),
        ),
        id="link-unknown-parameter-is-served-not-followed",
    ),
]


@pytest.fixture(scope="module")
def pair() -> Iterator[PathPair]:
    with path_pair() as both_paths:
        yield both_paths


def _serve_case(upstream: FakeUpstream, case: Case) -> None:
    base = upstream.url
    # The same origin in another spelling: scheme in upper case (RFC 3986 section 6.2.2.1).
    base_upper = base.replace("http://", "HTTP://")
    filters = case.filter or {}
    links = tuple(("Link", line.format(base=base, base_upper=base_upper)) for line in case.links)
    for page, body, header_lines in ((0, case.first_page, links), (1, case.second_page, ())):
        query = {**filters, "page": str(page), "size": "3", "sortOrder": "desc"}
        upstream.answer(CALLS_PATH, body, query=query, header_lines=header_lines)


def _answers(pair: PathPair, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    body = {"query": query, "variables": variables}
    fast = pair.fast.post("/graphql", json=body)
    standard = pair.standard.post("/graphql", json=body)
    assert fast.status_code == standard.status_code == 200
    assert fast.content == standard.content
    answer: dict[str, Any] = fast.json()
    return answer


def _warned(answer: dict[str, Any]) -> tuple[tuple[tuple[str | int, ...], str | None], ...]:
    warnings = answer.get("extensions", {}).get("warnings", [])
    assert all(w["code"] == "UPSTREAM_BAD_RESPONSE" and w["message"] for w in warnings)
    return tuple((tuple(w["path"]), w.get("callId")) for w in warnings)


@pytest.mark.parametrize("case", CASES)
def test_an_odd_but_legal_answer_is_read_alike_on_both_paths(pair: PathPair, case: Case) -> None:
    _serve_case(pair.upstream, case)
    variables = {"filter": case.filter}

    page = _answers(pair, CALLS, variables)
    walk = _answers(pair, CONNECTION, variables)

    assert "errors" not in page, page
    assert "errors" not in walk, walk
    assert tuple(c["id"] for c in page["data"]["calls"]) == case.calls
    edges = walk["data"]["callsConnection"]["edges"]
    assert tuple(e["node"]["id"] for e in edges) == case.walk
    assert walk["data"]["callsConnection"]["pageInfo"]["hasNextPage"] is case.has_next
    assert _warned(page) == case.warnings
    expected = case.warnings if case.connection_warnings is None else case.connection_warnings
    assert _warned(walk) == expected
    for name, value in case.first_call.items():
        assert page["data"]["calls"][0][name] == value, name
        assert edges[0]["node"][name] == value, name


class _Source:
    """A `CallSource` over one canned JSON body (what the compiled path reads)."""

    oldest_fetch = None

    def __init__(self, body: Any) -> None:
        self.body = body

    async def list_calls(self, query: ListQuery) -> CallList:
        records, bad = parse_call_list(self.body)
        return CallList(records, bad)

    async def list_calls_raw(self, query: ListQuery) -> tuple[Any, int]:
        return within_size(self.body, query)

    async def get_call(self, call_id: str) -> None:
        return None

    def next_query(self, found: CallList, query: ListQuery) -> ListQuery | None:
        return None

    def serve(self, count: int) -> None:
        pass

    def restart(self) -> None:
        pass


@pytest.mark.parametrize("case", CASES)
def test_the_compiled_path_answers_odd_records_itself(case: Case) -> None:
    # The byte-for-byte comparison above would also pass if the compiled path handed
    # every odd page to the standard executor; it must serve them itself.
    body = case.first_page
    if isinstance(body, bytes):
        body = orjson.loads(body.removeprefix(BOM))
    schema = graphql_core_schema(build_schema())
    document = parse(CALLS)
    plan = compile_plan(schema, document, get_operation_ast(document))
    assert plan is not None
    context = Context(
        "r-1", _Source(body), CursorCodec(b"k" * 16), max_entities=1000, tally=UpstreamTally()
    )

    data = asyncio.run(plan.run(context, {"filter": case.filter}))

    assert data is not None
    assert tuple(c["id"] for c in data["calls"]) == case.calls
    assert tuple((w.path, w.call_id) for w in context.warnings) == case.warnings


# -- how warnings travel: cacheable, logged once, counted -----------------------------------


def test_an_answer_with_only_warnings_keeps_its_caching(
    gateway_factory: Any, fake_upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    fake_upstream.answer(CALLS_PATH, [call("c-1", state="queued"), {"id": None}])
    gateway = gateway_factory(upstream_url=fake_upstream.url, cache_ttl=30)
    params = {"query": "{ calls { id state } }"}
    headers = {**credential_headers(DEMO), "Apollo-Require-Preflight": "1"}

    with caplog.at_level("WARNING", logger="gateway.upstream"):
        first = gateway.http.get("/graphql", params=params, headers=headers)
        second = gateway.http.get("/graphql", params=params, headers=headers)
    metrics = gateway.http.get("/metrics").text

    assert "errors" not in first.json()
    assert len(first.json()["extensions"]["warnings"]) == 2
    # Warnings are not errors: the browser may keep the answer, and so does the
    # whole-answer cache (the second request never reached the upstream).
    assert first.headers["cache-control"].startswith("private, max-age=")
    assert second.content == first.content
    assert len(fake_upstream.requests) == 1
    # Logged once each (not again for the cached answer), and counted by kind.
    logged = [r for r in caplog.records if r.name == "gateway.upstream"]
    assert sorted(str(getattr(r, "kind", "")) for r in logged) == ["left_out", "unknown_value"]
    assert 'gateway_upstream_warnings_total{kind="unknown_value"} 1.0' in metrics
    assert 'gateway_upstream_warnings_total{kind="left_out"} 1.0' in metrics
