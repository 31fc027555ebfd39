"""`Renders`: the bound on distinct requests per account, and executions one at a time."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from gateway.credentials import Credentials
from gateway.errors import RateLimited
from gateway.live.renders import Renders

ONE = Credentials("Basic b25lOnNlY3JldA==", "u1", "one")
TWO = Credentials("Basic dHdvOnNlY3JldA==", "u2", "two")


def test_a_new_request_past_the_bound_is_refused_and_a_held_one_is_not() -> None:
    renders = Renders(max_documents=2, retry_after=5)
    renders.hold(ONE, "a")
    release_b = renders.hold(ONE, "b")
    renders.hold(ONE, "a")  # one more subscriber of a held request costs nothing
    with pytest.raises(RateLimited) as refused:
        renders.hold(ONE, "c")
    assert refused.value.extensions == {
        "code": "RATE_LIMITED",
        "retryAfter": 5,
        "limit": "GATEWAY_LIVE_MAX_DOCUMENTS_PER_ACCOUNT",
    }
    renders.hold(TWO, "c")  # another account has its own room
    release_b()
    release_b()  # released once, however often called
    assert renders.documents(ONE) == 1
    renders.hold(ONE, "c")
    assert (renders.documents(ONE), renders.documents(TWO)) == (2, 1)


@pytest.mark.parametrize(
    ("holds", "releases", "left"),
    [
        pytest.param(["a", "a"], [0], 1, id="one-of-two-subscribers-left"),
        pytest.param(["a", "a"], [0, 1], 0, id="both-left"),
        pytest.param(["a", "b"], [1], 1, id="other-request-left"),
    ],
)
def test_a_request_is_held_while_any_subscriber_holds_it(
    holds: list[str], releases: list[int], left: int
) -> None:
    renders = Renders(max_documents=5, retry_after=1)
    released = [renders.hold(ONE, request) for request in holds]
    for index in releases:
        released[index]()
    assert renders.documents(ONE) == left


def test_turns_are_taken_one_at_a_time_and_the_loop_goes_on_meanwhile() -> None:
    # As `Stream` takes it: the turn held while the execution runs in a worker thread.
    async def body() -> None:
        renders = Renders(max_documents=1, retry_after=1)
        running: list[int] = []
        overlap: list[int] = []
        loop_thread = threading.get_ident()

        def work() -> int:
            assert threading.get_ident() != loop_thread
            running.append(1)
            overlap.append(len(running))
            time.sleep(0.05)
            running.pop()
            return 7

        async def in_turn() -> int:
            async with renders.turn():
                return await asyncio.to_thread(work)

        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        results = await asyncio.gather(*(in_turn() for _ in range(4)))
        ticker.cancel()
        assert results == [7] * 4
        assert overlap == [1] * 4
        assert ticks >= 5  # the loop went on while they ran

    asyncio.run(body())
