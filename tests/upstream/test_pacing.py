"""Pacing: against the sandbox enforcing the upstream's 1 request/second per account, on a
fake clock, and the schedules shared through Redis and through a locked file."""

from __future__ import annotations

import asyncio
import fcntl
import heapq
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from gateway.calls import ListQuery
from gateway.credentials import Credentials
from gateway.errors import RateLimited
from gateway.sandbox import credential_headers
from gateway.upstream.pacing import FileSlots, MonotonicClock, Pacer, RedisSlots
from gateway.upstream.redis import RedisStore
from gateway.upstream.service import CatapultService, create_upstream
from gateway.upstream.tally import UpstreamTally
from tests.conftest import DEMO, Gateway, GatewayFactory, Sandbox
from tests.fakes import upstream_client
from tests.upstream.test_service import RecordingMetrics

T = TypeVar("T")


def ignore(*_: object) -> None:
    """A metrics hook these tests do not observe."""


def page(n: int) -> str:
    return f"{{ calls(page: {n}, size: 1) {{ id }} }}"


class VirtualClock:
    """A fake clock for whole bursts: time moves only once every task waits on the clock,
    and then jumps to the first sleeper's due time. Seconds of pacing run in milliseconds,
    and the same burst always takes the same slots (no loop or network jitter)."""

    def __init__(self) -> None:
        self.time = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.time + seconds, next(self._order), woken))
        await woken

    async def run(self, work: Awaitable[T]) -> T:
        """Await `work`, moving the time on whenever nothing else can run."""
        task = asyncio.ensure_future(work)
        while True:
            await _settle()
            if task.done():
                return task.result()
            assert self._sleepers, "the work waits on something other than the clock"
            due, _, woken = heapq.heappop(self._sleepers)
            self.time = max(self.time, due)
            if not woken.done():
                woken.set_result(None)


class RateLimitedUpstream:
    """A fake Catapult that allows one request a second per account on the virtual clock,
    answering the rest 429 (as the sandbox's `rate_limit` fault does on the real one);
    records each request's time and status."""

    def __init__(self, clock: VirtualClock, interval: float = 1.0) -> None:
        self._clock = clock
        self._interval = interval
        self._next_allowed: dict[str, float] = {}
        self.requests: list[tuple[float, int]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        now = self._clock.now()
        account = request.headers["authorization"]
        if now < self._next_allowed.get(account, 0.0):
            # Refused requests leave the limit alone, as the real limiter does.
            self.requests.append((now, 429))
            return httpx.Response(
                429, json={"code": "rate-limit-reached"}, headers={"Retry-After": "1"}
            )
        self._next_allowed[account] = now + self._interval
        self.requests.append((now, 200))
        return httpx.Response(200, json=[{"id": f"c-{len(self.requests)}", "state": "completed"}])

    def statuses(self) -> list[int]:
        return [status for _, status in self.requests]


def paced_service(
    upstream: (
        Callable[[httpx.Request], httpx.Response]
        | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
    ),
    clock: VirtualClock,
    metrics: RecordingMetrics,
    *,
    queue_timeout: float,
    rate: float = 1,
) -> CatapultService:
    """The upstream service as the gateway builds it (`create_upstream`: lanes, the
    account's pacer, metrics hooks) at `rate` requests/s (0: pacing off), on the virtual
    clock, in front of `upstream`."""
    return create_upstream(
        upstream_client(httpx.MockTransport(upstream)),
        metrics,
        cache_url="memory://",
        cache_key=b"a test cache key",
        cache_ttl=5,
        cache_max_entries=100,
        cache_max_bytes=1 << 20,
        cache_timeout=1,
        rate=rate,
        queue_timeout=queue_timeout,
        pacing_file=None,
        clock=clock,
    )


async def ask(
    built: CatapultService, clock: VirtualClock, credentials: Credentials, n: int
) -> tuple[float, str | RateLimited]:
    """Page `n`: the virtual time it was answered and its first call's id, or the refusal."""
    try:
        answer = await built.list_calls(
            credentials,
            ListQuery(page=n, size=1),
            deadline=time.monotonic() + 60,
            tally=UpstreamTally(),
        )
    except RateLimited as exc:
        return clock.now(), exc
    return clock.now(), str(answer.body[0]["id"])


async def _paced_burst(
    built: CatapultService, clock: VirtualClock, count: int
) -> list[tuple[float, str | RateLimited]]:
    """`count` distinct pages of one new credential pair at once: per page, the virtual
    time it was answered and its first call's id, or the RateLimited it raised."""
    credentials = Credentials(
        authorization=credential_headers(DEMO)["Authorization"], user_id=DEMO.user_id
    )

    try:
        return await clock.run(
            asyncio.gather(*(ask(built, clock, credentials, n) for n in range(count)))
        )
    finally:
        await built.close()


def test_a_burst_of_five_pages_waits_in_line_and_never_sees_a_429() -> None:
    clock = VirtualClock()
    upstream = RateLimitedUpstream(clock)
    # Five requests at 1/s need four seconds of queue: a bound of 5 s lets them all wait.
    built = paced_service(upstream, clock, RecordingMetrics(), queue_timeout=5)

    answers = asyncio.run(_paced_burst(built, clock, 5))

    # No 429 reaches the caller, and paced, the upstream never answers one: the pair's
    # first page probes, the other four wait for its verdict and then take the account's
    # slots, one interval (1.05 s) apart from the probe and from each other.
    assert [answer for _, answer in answers if isinstance(answer, RateLimited)] == []
    assert upstream.statuses() == [200] * 5
    assert gaps([at for at, _ in upstream.requests]) == pytest.approx([1.05] * 4)


def test_a_burst_of_fifty_gets_fast_rate_limited_errors_for_the_overflow() -> None:
    clock = VirtualClock()
    upstream = RateLimitedUpstream(clock)
    metrics = RecordingMetrics()
    built = paced_service(upstream, clock, metrics, queue_timeout=2)  # the default bound

    answers = asyncio.run(_paced_burst(built, clock, 50))

    served = [answer for _, answer in answers if not isinstance(answer, RateLimited)]
    refused = [(at, answer) for at, answer in answers if isinstance(answer, RateLimited)]
    # The probe at 0 s and the account's slot at 1.05 s fit in the 2 s bound; the next,
    # at 2.1 s, does not.
    assert len(served) == 2
    assert len(refused) == 48
    for at, error in refused:
        # Fast: refused before the clock moved at all, not after waiting in the queue.
        assert at == 0.0
        assert error.retry_after >= 1
        # The gateway's own refusal: the overflow never reached the upstream.
        assert "upstreamStatus" not in error.extra
    assert upstream.statuses() == [200] * len(served)
    assert metrics.reports.count(("refusal", None)) == len(refused)


def _burst(gateways: list[Gateway], count: int) -> list[dict[str, Any]]:
    """`count` distinct page requests at once (one thread each), spread over `gateways`."""
    with ThreadPoolExecutor(max_workers=count) as pool:
        responses = pool.map(lambda n: gateways[n % len(gateways)].query(page(n)), range(count))
        return [response.json() for response in responses]


def test_the_overflow_of_a_burst_is_refused_coded_counted_and_never_sent(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    # The HTTP side of the refusals above (the GraphQL error, /readyz, /metrics), on the
    # real clock: a bound shorter than one interval refuses every request that cannot
    # leave at once, so nothing here waits for a slot. One request per 10 s: the burst of
    # 50 threads must land within one interval, which a loaded machine stretched past 1 s.
    gateway = gateway_factory(upstream_rate=0.1, upstream_queue_timeout=0.5)
    sandbox.faults(rate_limit=True)

    bodies = _burst([gateway], 50)

    served = [body for body in bodies if "errors" not in body]
    refused = [body["errors"] for body in bodies if "errors" in body]
    # The probe of the new pair is served; the others, behind it by an interval, are not.
    assert len(served) == 1
    assert len(refused) == 49
    for errors in refused:
        [error] = errors
        assert error["extensions"]["code"] == "RATE_LIMITED"
        assert error["extensions"]["retryAfter"] >= 1
        assert "upstreamStatus" not in error["extensions"]
    assert [r["status"] for r in sandbox.requests()] == [200]
    assert gateway.http.get("/readyz").json()["pacing"]["refused"] == len(refused)
    metrics = gateway.http.get("/metrics").text.splitlines()
    assert f"gateway_pacing_refusals_total {float(len(refused))}" in metrics


def test_an_upstream_429_within_the_bound_is_waited_out_and_retried_once(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(upstream_rate=1)
    sandbox.faults(rate_limit=True)
    # Someone else on the account (a script, another gateway) takes the slot first.
    with httpx.Client(base_url=sandbox.url, auth=(DEMO.token, DEMO.secret)) as other:
        other.get("/v1/users/u-demo/calls", params={"size": 1}).raise_for_status()

    response = gateway.query(page(0))

    assert "errors" not in response.json()
    assert [r["status"] for r in sandbox.requests()] == [200, 429, 200]
    assert gateway.http.get("/readyz").json()["pacing"]["waitedOut429"] == 1


def test_an_upstream_429_beyond_the_bound_reaches_the_caller(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(upstream_rate=1, upstream_queue_timeout=1)
    sandbox.faults(rate_limit=True, rate_limit_interval_ms=5000)
    with httpx.Client(base_url=sandbox.url, auth=(DEMO.token, DEMO.secret)) as other:
        other.get("/v1/users/u-demo/calls", params={"size": 1}).raise_for_status()

    [error] = gateway.query(page(0)).json()["errors"]

    assert error["extensions"]["code"] == "RATE_LIMITED"
    assert error["extensions"]["upstreamStatus"] == 429
    assert 4 <= error["extensions"]["retryAfter"] <= 5
    assert [r["status"] for r in sandbox.requests()] == [200, 429]


@pytest.mark.serial  # two gateways' shared Redis pacing against the sandbox's 429 window
def test_two_gateways_sharing_redis_pace_one_account_together(
    gateway_factory: GatewayFactory, sandbox: Sandbox, redis_url: str
) -> None:
    shared = {
        "cache_url": redis_url,
        "cache_key": "a shared cache key",
        "upstream_rate": 1,
        "upstream_queue_timeout": 4,
    }
    first, second = gateway_factory(**shared), gateway_factory(**shared)
    sandbox.faults(rate_limit=True)

    bodies = _burst([first, second], 4)

    # Real time: the shared schedule is on Redis's clock (TIME), which no fake clock moves.
    # Paced apart, each replica alone would send its first two requests together with the
    # other's and meet at least two 429s (one from jitter on a busy machine is tolerated).
    assert [body.get("errors") for body in bodies] == [None] * 4
    statuses = [r["status"] for r in sandbox.requests()]
    assert statuses.count(200) == 4
    assert statuses.count(429) <= 1


def test_rate_0_turns_pacing_off() -> None:
    async def run() -> None:
        pacer = Pacer(
            rate=0,
            queue_timeout=0,
            clock=FakeClock(),
            shared=None,
            on_wait=ignore,
            on_refusal=ignore,
        )
        calls = 0

        async def call() -> int:
            nonlocal calls
            calls += 1
            return calls

        assert await asyncio.gather(*(pacer.run("a", call) for _ in range(20))) == list(
            range(1, 21)
        )

        async def limited() -> int:
            raise RateLimited("429", retry_after=1)

        with pytest.raises(RateLimited):
            await pacer.run("a", limited)

    asyncio.run(run())


def test_accounts_are_paced_separately() -> None:
    async def run() -> None:
        # A bound of zero: only a request whose slot is free right now may go.
        pacer = Pacer(
            rate=1,
            queue_timeout=0,
            clock=FakeClock(),
            shared=None,
            on_wait=ignore,
            on_refusal=ignore,
        )

        async def call() -> str:
            return "ok"

        assert await pacer.run("a", call) == "ok"
        assert await pacer.run("b", call) == "ok"
        with pytest.raises(RateLimited) as refused:
            await pacer.run("a", call)
        assert 1 <= refused.value.retry_after <= 2

    asyncio.run(run())


class FakeClock:
    """A clock that only moves when slept on, recording each sleep: no test really waits."""

    def __init__(self, start: float = 100.0) -> None:
        self.time = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds
        await asyncio.sleep(0)


def test_requests_in_a_row_wait_one_interval_each_on_a_fake_clock() -> None:
    clock = FakeClock()
    pacer = Pacer(
        rate=1, queue_timeout=5, clock=clock, shared=None, on_wait=ignore, on_refusal=ignore
    )
    departures: list[float] = []

    async def call() -> None:
        departures.append(clock.now())

    async def run() -> None:
        for _ in range(3):
            await pacer.run("a", call)

    asyncio.run(run())

    assert clock.sleeps == pytest.approx([1.05, 1.05])
    assert gaps(departures) == pytest.approx([1.05, 1.05])


@pytest.mark.parametrize(
    ("retry_after", "sleeps", "outcome"),
    [
        pytest.param(2, [2.0], "ok", id="within-the-bound-waited-out"),
        pytest.param(9, [], "RATE_LIMITED", id="beyond-the-bound-raised"),
    ],
)
def test_an_upstream_429_is_waited_out_once_on_a_fake_clock(
    retry_after: int, sleeps: list[float], outcome: str
) -> None:
    clock = FakeClock()
    pacer = Pacer(
        rate=1, queue_timeout=5, clock=clock, shared=None, on_wait=ignore, on_refusal=ignore
    )
    answers: list[Exception | str] = [RateLimited("429", retry_after=retry_after), "ok"]

    async def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def run() -> str:
        try:
            return await pacer.run("a", call)
        except RateLimited as exc:
            return exc.code

    assert asyncio.run(run()) == outcome
    # After a wait of retry_after, the request's slot (one interval on) is already due.
    assert clock.sleeps == sleeps
    assert pacer.state()["waitedOut429"] == (1 if outcome == "ok" else 0)


class LateLoopClock:
    """A fake clock whose event loop the test drives: each sleeper wakes when told to."""

    def __init__(self) -> None:
        self.time = 0.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.time + seconds, woken))
        await woken

    async def wake_next(self, late: float = 0.0) -> bool:
        """Wake the sleeper due first, `late` seconds after it was due; False if none."""
        await _settle()
        if not self._sleepers:
            return False
        self._sleepers.sort(key=lambda sleeper: sleeper[0])
        due, woken = self._sleepers.pop(0)
        self.time = max(self.time, due + late)
        woken.set_result(None)
        await _settle()
        return True


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def gaps(departures: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(departures)]


@pytest.mark.parametrize(
    "lateness",
    [
        pytest.param([0.85, 0.0], id="first-sleeper-late-next-on-time"),
        pytest.param([0.5, 0.0, 0.9, 0.0], id="two-late-wakes"),
        pytest.param([0.0, 0.0, 0.0], id="loop-on-time"),
    ],
)
def test_spacing_holds_from_actual_departures_when_the_loop_wakes_late(
    lateness: list[float],
) -> None:
    async def run() -> list[float]:
        clock = LateLoopClock()
        pacer = Pacer(
            rate=1, queue_timeout=30, clock=clock, shared=None, on_wait=ignore, on_refusal=ignore
        )
        departures: list[float] = []

        async def call() -> None:
            departures.append(clock.now())

        tasks = [asyncio.create_task(pacer.run("a", call)) for _ in range(len(lateness) + 1)]
        for late in lateness:
            await clock.wake_next(late)
        while await clock.wake_next():
            pass
        await asyncio.gather(*tasks)
        return departures

    departures = asyncio.run(run())

    assert len(departures) == len(lateness) + 1
    # Before departures were checked, a request woken 0.85 s late left 0.2 s before its
    # on-time neighbour.
    assert min(gaps(departures)) >= 1.0


def test_spacing_holds_with_the_event_loop_busy_on_the_cpu() -> None:
    # The real clock, and a loop made late by work that holds it 0-80 ms at a time.
    rate = 10.0

    async def run() -> list[float]:
        pacer = Pacer(
            rate=rate,
            queue_timeout=30,
            clock=MonotonicClock(),
            shared=None,
            on_wait=ignore,
            on_refusal=ignore,
        )
        departures: list[float] = []
        done = False

        async def call() -> None:
            departures.append(time.monotonic())

        async def hog() -> None:
            generator = random.Random(7)
            while not done:
                until = time.monotonic() + generator.uniform(0, 0.08)
                while time.monotonic() < until:
                    pass
                await asyncio.sleep(0)

        hogs = [asyncio.create_task(hog()) for _ in range(3)]
        # Six requests (five gaps) are enough: without the departure check, 10 runs of
        # 10 failed; each request more holds a core busy for another ~0.25 s.
        await asyncio.gather(*(pacer.run("a", call) for _ in range(6)))
        done = True
        await asyncio.gather(*hogs)
        return sorted(departures)

    departures = asyncio.run(run())

    assert min(gaps(departures)) >= 1 / rate


def test_replicas_sharing_redis_space_departures_when_one_wakes_late(redis_url: str) -> None:
    # Replica A's request is woken 0.3 s late; B's, planned one interval later, on time.
    rate = 2.0

    class LateOnce(MonotonicClock):
        def __init__(self, late: float) -> None:
            self.late = late

        async def sleep(self, seconds: float) -> None:
            late, self.late = self.late, 0.0
            await asyncio.sleep(seconds + late)

    async def run() -> list[float]:
        # A timeout no loaded machine reaches: a timed-out store paces alone, which is
        # another test (the outage), not this one.
        stores = [RedisStore(redis_url, timeout=10), RedisStore(redis_url, timeout=10)]
        a = Pacer(
            rate=rate,
            queue_timeout=10,
            clock=LateOnce(0.3),
            shared=RedisSlots(stores[0]),
            on_wait=ignore,
            on_refusal=ignore,
        )
        b = Pacer(
            rate=rate,
            queue_timeout=10,
            clock=MonotonicClock(),
            shared=RedisSlots(stores[1]),
            on_wait=ignore,
            on_refusal=ignore,
        )
        departures: list[float] = []

        async def call() -> None:
            departures.append(time.monotonic())

        try:
            await a.run("acct", call)  # leaves at once
            first = asyncio.create_task(a.run("acct", call))  # planned +0.525, wakes late
            await asyncio.sleep(0.05)
            second = asyncio.create_task(b.run("acct", call))  # planned +1.05, on time
            await asyncio.gather(first, second)
        finally:
            for store in stores:
                await store.close()
        return sorted(departures)

    departures = asyncio.run(run())

    assert min(gaps(departures)) >= 1 / rate


# -- FileSlots: the schedule the workers of one host share through a locked file --


def test_two_holders_of_one_file_share_one_schedule(tmp_path: Path) -> None:
    clock = FakeClock()
    first, second = (
        FileSlots(str(tmp_path / "pacing"), clock),
        FileSlots(str(tmp_path / "pacing"), clock),
    )
    try:
        waits = [
            complete(first.reserve("account", 1.0, 5.0)),
            complete(second.reserve("account", 1.0, 5.0)),
            complete(first.reserve("other account", 1.0, 5.0)),
            complete(second.reserve("account", 1.0, 5.0)),
        ]
    finally:
        first.close()
        second.close()

    assert waits == [0, 1.0, 0, 2.0]


def test_a_slot_past_the_wait_bound_is_not_reserved(tmp_path: Path) -> None:
    slots = FileSlots(str(tmp_path / "pacing"), FakeClock())
    try:
        complete(slots.reserve("account", 3.0, 5.0))
        refused = complete(slots.reserve("account", 3.0, 1.0))  # 3 s away: refused
        next_wait = complete(slots.reserve("account", 3.0, 5.0))
    finally:
        slots.close()

    assert refused == 3.0
    assert next_wait == 3.0  # the refusal took no slot


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[1, 2]", b'{"account": [1]}', b'{"account": [1e9, 1e9]}', b'{"account": {}}'],
    ids=["garbage", "not-an-object", "short-entry", "far-future", "entry-not-a-list"],
)
def test_a_corrupt_or_planted_table_is_started_again(tmp_path: Path, content: bytes) -> None:
    # A write cut short or a planted value must neither stop sharing nor stall an account.
    path = tmp_path / "pacing"
    path.write_bytes(content)
    path.chmod(0o600)
    slots = FileSlots(str(path), FakeClock())
    try:
        wait = complete(slots.reserve("account", 1.0, 5.0))
    finally:
        slots.close()

    assert wait == 0
    assert isinstance(orjson.loads(path.read_bytes())["account"], list)


def test_accounts_idle_for_a_minute_leave_the_table(tmp_path: Path) -> None:
    # The table is read and written whole under the lock at every reservation and
    # departure. Kept until it passed 10,000 accounts, 9,990 accounts seen once made each
    # reservation plus departure take 54 ms: the lock held past LOCK_WAIT, so the other
    # workers gave up on it and paced alone.
    clock = FakeClock(start=1000.0)
    path = tmp_path / "pacing"
    idle = {f"idle {n}": [900.0, 899.0] for n in range(500)}
    path.write_bytes(orjson.dumps({**idle, "busy": [1001.05, 1000.0]}))
    path.chmod(0o600)
    slots = FileSlots(str(path), clock)
    try:
        complete(slots.reserve("account", 1.0, 5.0))
    finally:
        slots.close()

    assert set(orjson.loads(path.read_bytes())) == {"account", "busy"}


def test_a_symbolic_link_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"[1, 2, 3]")
    (tmp_path / "pacing").symlink_to(victim)
    slots = FileSlots(str(tmp_path / "pacing"), FakeClock())
    try:
        assert complete(slots.reserve("account", 1.0, 5.0)) is None
    finally:
        slots.close()

    assert victim.read_bytes() == b"[1, 2, 3]"


def test_a_file_others_may_write_is_not_trusted(tmp_path: Path) -> None:
    path = tmp_path / "pacing"
    path.write_bytes(b"{}")
    path.chmod(0o666)
    slots = FileSlots(str(path), FakeClock())
    try:
        assert complete(slots.reserve("account", 1.0, 5.0)) is None
    finally:
        slots.close()


def test_a_lock_held_elsewhere_is_not_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "pacing"
    slots = FileSlots(str(path), FakeClock())
    with path.open("a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            assert complete(slots.reserve("account", 1.0, 5.0)) is None
        finally:
            slots.close()


def test_a_missing_directory_means_pacing_alone(tmp_path: Path) -> None:
    slots = FileSlots(str(tmp_path / "gone" / "pacing"), FakeClock())

    assert complete(slots.reserve("account", 1.0, 5.0)) is None


def complete(pending: Any) -> Any:
    return asyncio.run(pending)
