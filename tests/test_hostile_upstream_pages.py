"""An upstream page with more calls than the `size` asked for is cut to `size`.

A broken or hostile upstream that ignores `size` must not make the gateway serve (or
hold) more than the caller asked for: the first `size` calls are served, with one
`oversized_page` warning in `extensions.warnings`. A bridge or conference list is never
cut: there the upstream rightly sends every match. The memory side (9 MB pages of 13,000
calls) is measured in tests/test_body_budget.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from gateway.calls import MAX_SIP_HEADERS, ListQuery, within_size
from gateway.sandbox import credential_headers
from gateway.upstream.routes import calls_path
from tests.conftest import DEMO
from tests.fakes import FakeUpstream
from tests.inprocess import assert_healthy, healthz_within_a_second_while, in_process

HEADERS = [(k.lower().encode(), v.encode()) for k, v in credential_headers(DEMO).items()]
PATH = calls_path(DEMO.user_id)
FIVE = orjson.dumps(
    [
        {"id": f"c-{n}", "direction": "in", "from": "+19195551234", "to": "+19195554321",
         "state": "completed"}
        for n in range(5)
    ]
)  # fmt: skip
FAST = pytest.mark.parametrize("fast_path", [True, False], ids=["fast-path", "executor"])


def ids(calls: list[dict[str, Any]]) -> list[str]:
    return [call["id"] for call in calls]


@pytest.mark.parametrize(
    ("query", "length", "cut"),
    [
        pytest.param(ListQuery(size=2), 5, (2, 3), id="more-than-size-cut"),
        pytest.param(ListQuery(size=5), 5, (5, 0), id="exactly-size-kept"),
        pytest.param(ListQuery(size=9), 5, (5, 0), id="fewer-than-size-kept"),
        pytest.param(ListQuery(bridge_id="b-1", size=2), 5, (5, 0), id="bridge-list-never-cut"),
        pytest.param(ListQuery(conference_id="f-1", size=2), 5, (5, 0), id="conference-never-cut"),
    ],
)
def test_within_size(query: ListQuery, length: int, cut: tuple[int, int]) -> None:
    body, excess = within_size(list(range(length)), query)
    assert (len(body), excess) == cut


def test_a_body_that_is_not_a_list_is_left_for_the_reader_to_refuse() -> None:
    assert within_size({"id": "c-1"}, ListQuery(size=1)) == ({"id": "c-1"}, 0)


@FAST
@pytest.mark.parametrize(
    ("field", "served", "warned"),
    [
        pytest.param("calls(size: 2) { id }", ["c-0", "c-1"], True, id="calls-cut"),
        pytest.param(
            'calls(size: 2, filter: {bridgeId: "b-1"}) { id }',
            [f"c-{n}" for n in range(5)],
            False,
            id="bridge-list-whole",
        ),
    ],
)
def test_an_oversized_page_is_served_cut_with_a_warning(
    fake_upstream: FakeUpstream, fast_path: bool, field: str, served: list[str], warned: bool
) -> None:
    fake_upstream.answer(PATH, FIVE)

    async def run() -> None:
        async with in_process(fake_upstream.url, fast_path=fast_path) as client:
            for _ in range(2):  # a miss, then the cached page
                response = await client.post(
                    "/graphql", json={"query": f"{{ {field} }}"}, headers=HEADERS
                )
                body = response.json()
                assert "errors" not in body
                assert ids(body["data"]["calls"]) == served
                warnings = body.get("extensions", {}).get("warnings", [])
                if warned:
                    [warning] = warnings
                    assert warning["path"] == ["calls"]
                    assert warning["code"] == "UPSTREAM_BAD_RESPONSE"
                    assert "3 more calls than the 2 asked for" in warning["message"]
                else:
                    assert warnings == []
            await assert_healthy(client)

    asyncio.run(run())


def test_a_connection_slice_reaching_an_oversized_pages_end_says_so(
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.answer(PATH, FIVE)
    query = "{ callsConnection(first: 2) { edges { node { id } } pageInfo { hasNextPage } } }"

    async def run() -> httpx.Response:
        async with in_process(fake_upstream.url) as client:
            return await client.post("/graphql", json={"query": query}, headers=HEADERS)

    body = asyncio.run(run()).json()
    connection = body["data"]["callsConnection"]
    # The upstream's page of 2 holds c-0 and c-1; no next link, so no next page.
    assert [edge["node"]["id"] for edge in connection["edges"]] == ["c-0", "c-1"]
    assert connection["pageInfo"] == {"hasNextPage": False}
    [warning] = body["extensions"]["warnings"]
    assert warning["path"] == ["callsConnection"]


# Four million entries in 8 MB, under the body bound: before the cut moved ahead of the
# per-entry pass, each was slimmed on the event loop (/healthz stalled 4 s).
HUGE_LIST = b"[" + b"0," * 3_999_999 + b"0]"


@FAST
@pytest.mark.serial  # /healthz within 1 s while the list is cut
def test_a_list_of_millions_is_cut_before_any_per_entry_pass(
    fake_upstream: FakeUpstream, fast_path: bool
) -> None:
    fake_upstream.answer(PATH, HUGE_LIST)

    async def run() -> dict[str, Any]:
        async with in_process(fake_upstream.url, fast_path=fast_path) as client:
            response = await healthz_within_a_second_while(
                client,
                client.post(
                    "/graphql", json={"query": "{ calls(size: 5) { id } }"}, headers=HEADERS
                ),
            )
            body: dict[str, Any] = response.json()
            return body

    body = asyncio.run(run())
    # Five entries that cannot be calls are left out; the rest were never read.
    warnings = body["extensions"]["warnings"]
    assert any("3999995 more calls than the 5 asked for" in w["message"] for w in warnings)
    assert len(warnings) == 6


def test_a_bridge_list_is_cut_at_the_upstreams_largest_page(fake_upstream: FakeUpstream) -> None:
    calls = [orjson.loads(FIVE)[0] | {"id": f"c-{n}"} for n in range(1005)]
    fake_upstream.answer(PATH, orjson.dumps(calls))
    query = '{ calls(size: 2, filter: {bridgeId: "b-1"}) { id } }'

    async def run() -> dict[str, Any]:
        async with in_process(fake_upstream.url) as client:
            response = await client.post("/graphql", json={"query": query}, headers=HEADERS)
            body: dict[str, Any] = response.json()
            return body

    body = asyncio.run(run())
    assert len(body["data"]["calls"]) == 1000
    [warning] = body["extensions"]["warnings"]
    assert "5 more calls" in warning["message"]


def sip_call(headers: int) -> bytes:
    call = orjson.loads(FIVE)[0]
    call["sipHeaders"] = {f"X-H-{n}": f"v-{n}" for n in range(headers)}
    return orjson.dumps([call])


@FAST
@pytest.mark.parametrize(
    ("headers", "served", "warned"),
    [
        pytest.param(5, 5, False, id="documented-five"),
        pytest.param(MAX_SIP_HEADERS, MAX_SIP_HEADERS, False, id="at-bound"),
        pytest.param(MAX_SIP_HEADERS + 1, MAX_SIP_HEADERS, True, id="one-over"),
        pytest.param(200_000, MAX_SIP_HEADERS, True, id="200k-headers"),
    ],
)
def test_sip_headers_are_served_up_to_the_bound_with_a_warning(
    fake_upstream: FakeUpstream, fast_path: bool, headers: int, served: int, warned: bool
) -> None:
    fake_upstream.answer(PATH, sip_call(headers))
    query = "{ calls(size: 1) { id sipHeaders { name value } } }"

    async def run() -> dict[str, Any]:
        async with in_process(fake_upstream.url, fast_path=fast_path) as client:
            response = await client.post("/graphql", json={"query": query}, headers=HEADERS)
            body: dict[str, Any] = response.json()
            return body

    body = asyncio.run(run())
    assert "errors" not in body
    [call] = body["data"]["calls"]
    assert call["sipHeaders"][:2] == [
        {"name": "X-H-0", "value": "v-0"},
        {"name": "X-H-1", "value": "v-1"},
    ]
    assert len(call["sipHeaders"]) == served
    warnings = body.get("extensions", {}).get("warnings", [])
    if warned:
        [warning] = warnings
        assert warning["path"] == ["calls", 0, "sipHeaders"]
        assert f"only the first {MAX_SIP_HEADERS} are served" in warning["message"]
    else:
        assert warnings == []
