"""The operation loader: batched cold look-ups and one refusal per operation and account."""

from __future__ import annotations

import asyncio
import base64
import gc
import time
from collections.abc import Sequence
from typing import Any

import pytest

from gateway.calls import CallList, ListQuery
from gateway.config import Settings
from gateway.credentials import Credentials
from gateway.errors import UpstreamBadResponse
from gateway.loaders import CallService, OperationLoader
from gateway.upstream.client import UpstreamAnswer
from gateway.upstream.entities import KnownCall
from gateway.upstream.tally import UpstreamTally
from tests.conftest import DEMO, GatewayFactory, Sandbox

LIST_PATH = f"/v1/users/{DEMO.user_id}/calls/"
DEFAULT_RATE = Settings.model_fields["upstream_rate"].default
WRONG = base64.b64encode(f"{DEMO.token}:not-the-secret".encode()).decode()


@pytest.mark.parametrize(
    ("cold", "expected"),
    [
        pytest.param(1, ["one"], id="one-cold-id"),
        pytest.param(2, ["one", "one"], id="two-cold-ids"),
        pytest.param(3, ["page"], id="three-cold-ids"),
        pytest.param(9, ["page"], id="nine-cold-ids"),
    ],
)
def test_cold_ids_cost_the_fewest_requests(
    gateway_factory: GatewayFactory, sandbox: Sandbox, cold: int, expected: list[str]
) -> None:
    ids = [
        c["id"]
        for c in gateway_factory().query("{ calls(size: 50) { id } }").json()["data"]["calls"]
    ]
    gateway = gateway_factory()
    sandbox.reset()
    fields = " ".join(f'c{n}: call(id: "{ids[n * 3]}") {{ id }}' for n in range(cold))

    answer = gateway.query(f"{{ {fields} }}").json()

    assert answer == {"data": {f"c{n}": {"id": ids[n * 3]} for n in range(cold)}}
    kinds = ["page" if r["path"] == LIST_PATH else "one" for r in sandbox.requests()]
    assert kinds == expected


@pytest.mark.parametrize(
    "query",
    [
        pytest.param('{ a: call(id: "c-a") { id } b: call(id: "c-b") { id } }', id="two-calls"),
        pytest.param('{ calls(size: 2) { id } call(id: "c-a") { id } }', id="list-and-call"),
        pytest.param(
            "{ a: calls(size: 2) { id } b: calls(size: 3) { id } c: calls(size: 4) { id } }",
            id="three-lists",
        ),
    ],
)
@pytest.mark.parametrize("status", [401, 403])
def test_one_refusal_ends_the_operations_upstream_traffic(
    gateway_factory: GatewayFactory, sandbox: Sandbox, query: str, status: int
) -> None:
    # Default pacing: the second request waits for its slot, and must then stay home.
    gateway = gateway_factory(upstream_rate=DEFAULT_RATE)
    if status == 401:
        headers = {"Authorization": f"Basic {WRONG}", "X-Catapult-User-Id": DEMO.user_id}
    else:
        headers = None
        sandbox.faults(fail_status=403, fail_rate=1.0)

    answer = gateway.query(query, headers=headers).json()

    code = "UNAUTHENTICATED" if status == 401 else "FORBIDDEN"
    # Every field that failed says the refusal's code (a non-null list that failed
    # nulls the whole data, so not every field gets as far as an error).
    assert {e["extensions"]["code"] for e in answer["errors"]} == {code}
    assert [r["status"] for r in sandbox.requests()] == [status]


def loader_of(upstream: CallService, tally: UpstreamTally | None = None) -> OperationLoader:
    """A loader over `upstream` for one caller, with no request budget and a 5 s deadline."""
    credentials = Credentials(authorization="Basic dDpz", user_id="u-a", token="t")
    return OperationLoader(
        upstream,
        lambda: credentials,
        tally=UpstreamTally() if tally is None else tally,
        deadline=time.monotonic() + 5,
        refresh=False,
        max_requests=None,
        max_calls=5000,
    )


class _FailsLater:
    """An upstream whose every list request fails once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def list_calls(self, *args: Any, **options: Any) -> UpstreamAnswer:
        await self.release.wait()
        raise UpstreamBadResponse("The upstream answered with a body that is not JSON.")

    async def get_call(self, *args: Any, **options: Any) -> UpstreamAnswer | None:
        raise AssertionError("only lists are asked for")

    async def recall_calls(self, *args: Any) -> dict[str, KnownCall]:
        raise AssertionError("only lists are asked for")

    def next_page(self, *args: Any) -> None:
        raise AssertionError("no list is ever answered")


def test_a_request_whose_fields_went_away_fails_without_an_unretrieved_exception() -> None:
    # The executor cancels the other root fields once a non-null one fails; their
    # upstream request goes on (shielded) and fails later with no one waiting. Before,
    # asyncio logged "Task exception was never retrieved" at error level for each, as
    # `asyncio.shield` forgets the request once its waiter is cancelled.
    unretrieved: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: unretrieved.append(c))
        upstream = _FailsLater()
        loader = loader_of(upstream)
        field = asyncio.ensure_future(loader.list_calls(ListQuery(size=2)))
        await asyncio.sleep(0.01)
        field.cancel()
        upstream.release.set()
        await asyncio.sleep(0.01)
        del loader, field  # the operation is over
        gc.collect()  # a task's unretrieved exception is reported when it is freed

    asyncio.run(scenario())

    assert unretrieved == []


class _Answers:
    """An upstream whose pages and calls were fetched at given times (recording what it
    was asked)."""

    def __init__(self, pages: dict[int, float], known: dict[str, float]) -> None:
        self.pages = pages
        self.known = known
        self.asked: list[object] = []

    async def list_calls(
        self, credentials: Credentials, query: ListQuery, **_: Any
    ) -> UpstreamAnswer:
        self.asked.append(query.page)
        return UpstreamAnswer([], {}, fetched_at=self.pages[query.page])

    async def get_call(self, *args: Any, **options: Any) -> UpstreamAnswer | None:
        raise AssertionError("every id asked for is known")

    async def recall_calls(
        self, credentials: Credentials, call_ids: Sequence[str]
    ) -> dict[str, KnownCall]:
        self.asked.extend(call_ids)
        return {i: KnownCall({"id": i}, self.known[i]) for i in call_ids if i in self.known}

    def next_page(self, *args: Any) -> None:
        return None  # the canned pages link to no other


@pytest.mark.parametrize(
    ("pages", "known", "expected"),
    [
        pytest.param({}, {}, None, id="nothing-fetched"),
        pytest.param({0: 100.0}, {}, 100.0, id="one-page"),
        pytest.param({0: 100.0, 1: 40.0, 2: 70.0}, {}, 40.0, id="the-oldest-of-three-pages"),
        pytest.param({0: 100.0}, {"c-1": 30.0}, 30.0, id="an-older-known-call"),
    ],
)
def test_the_loader_says_when_the_oldest_answer_it_used_was_fetched(
    pages: dict[int, float], known: dict[str, float], expected: float | None
) -> None:
    # What the endpoint's verdict on the answer reads, so the answer cache keeps it no
    # longer than its oldest data allows.
    upstream = _Answers(pages, known)
    loader = loader_of(upstream)

    async def operation() -> None:
        for page in pages:
            await loader.list_calls(ListQuery(page=page))
        for call_id in known:
            await loader.get_call(call_id)

    asyncio.run(operation())

    assert loader.oldest_fetch == expected
    assert upstream.asked == [*pages, *known]


class _Tallying:
    """An upstream that counts what the service would into the tally each ask carries (a
    miss and one request sent) and records which tally that was; `release` holds the
    answers, so that two operations' asks interleave."""

    def __init__(self, asks: int) -> None:
        self.release = asyncio.Event()
        self.asks = asks
        self.asked: list[tuple[object, UpstreamTally]] = []

    async def _answer(self, what: object, tally: UpstreamTally) -> None:
        self.asked.append((what, tally))
        tally.cache_result("miss")
        if len(self.asked) == self.asks:
            # Every ask of both operations is out: now they are answered, together.
            self.release.set()
        await self.release.wait()
        tally.request_sent()

    async def list_calls(
        self, credentials: Credentials, query: ListQuery, *, tally: UpstreamTally, **_: Any
    ) -> UpstreamAnswer:
        await self._answer(query.size, tally)
        return UpstreamAnswer([], {})

    async def get_call(
        self, credentials: Credentials, call_id: str, *, tally: UpstreamTally, **_: Any
    ) -> UpstreamAnswer | None:
        await self._answer(call_id, tally)
        return UpstreamAnswer({"id": call_id, "from": "+19195550100", "to": "+1919"}, {})

    async def recall_calls(
        self, credentials: Credentials, call_ids: Sequence[str]
    ) -> dict[str, KnownCall]:
        return {}

    def next_page(self, *args: Any) -> None:
        return None  # the canned pages link to no other


def test_interleaved_operations_each_count_only_their_own_asks_in_their_own_tally() -> None:
    # The tally travels with each ask (the service counts into the one it is handed), so
    # two operations running at once on one loop, in whatever task or context variable
    # their work happens to run, each count exactly what they asked, batches included.
    upstream = _Tallying(asks=5)
    first, second = UpstreamTally(), UpstreamTally()

    async def operations() -> None:
        one, other = loader_of(upstream, first), loader_of(upstream, second)
        asks = [
            one.list_calls(ListQuery(size=2)),
            other.get_call("c-1"),
            one.get_call("c-2"),
            other.list_calls(ListQuery(size=3)),
            other.get_call("c-3"),
        ]
        await asyncio.gather(*asks)

    asyncio.run(operations())

    assert sorted(str(what) for what, tally in upstream.asked if tally is first) == ["2", "c-2"]
    assert sorted(str(what) for what, tally in upstream.asked if tally is second) == [
        "3",
        "c-1",
        "c-3",
    ]
    assert (first.cache, first.requests) == ({"miss": 2}, 2)
    assert (second.cache, second.requests) == ({"miss": 3}, 3)


class _OneBridgePage:
    """One bridge page for every list request; reads its next link against each query."""

    def __init__(self) -> None:
        self.lists = 0
        self.read_against: list[ListQuery] = []

    async def list_calls(self, *args: Any, **options: Any) -> UpstreamAnswer:
        self.lists += 1
        await asyncio.sleep(0)
        return UpstreamAnswer([], {"next": "the upstream's link"})

    async def get_call(self, *args: Any, **options: Any) -> UpstreamAnswer | None:
        raise AssertionError("only lists are asked for")

    async def recall_calls(self, *args: Any) -> dict[str, KnownCall]:
        raise AssertionError("only lists are asked for")

    def next_page(
        self, credentials: Credentials, query: ListQuery, answer: UpstreamAnswer
    ) -> ListQuery | None:
        self.read_against.append(query)
        if query.page >= 1:
            raise UpstreamBadResponse("it does not move forward")
        return ListQuery.create(bridge_id="b-1", page=1)


def test_pages_that_share_one_request_each_read_its_next_link_against_their_own_query() -> None:
    # A bridge filter sends no page or size: its pages are one request and one answer,
    # but whether that answer's next link leads on depends on the page each one asked for.
    upstream = _OneBridgePage()
    loader = loader_of(upstream)
    first, third = ListQuery.create(bridge_id="b-1"), ListQuery.create(bridge_id="b-1", page=2)

    async def scenario() -> list[CallList]:
        return list(await asyncio.gather(loader.list_calls(first), loader.list_calls(third)))

    from_first, from_third = asyncio.run(scenario())

    assert upstream.lists == 1
    assert upstream.read_against == [first, third]
    assert loader.next_query(from_first, first) == ListQuery.create(bridge_id="b-1", page=1)
    with pytest.raises(UpstreamBadResponse, match="does not move forward"):
        loader.next_query(from_third, third)
