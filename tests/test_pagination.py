"""`callsConnection`: Relay pagination over the upstream's `rel="next"` links, and its cursors."""

from __future__ import annotations

import base64
import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.calls import ListQuery
from gateway.errors import BadUserInput, UpstreamBadResponse
from gateway.pagination import CursorCodec, Position, next_query
from gateway.upstream.client import parse_link_header
from gateway.upstream.routes import ANCHORED
from tests.conftest import Gateway, GatewayFactory, Sandbox, examples
from tests.fakes import FakeUpstream, upstream_call

CONNECTION = """
query Walk($filter: CallFilter, $first: Int!, $after: String, $order: SortOrder! = DESC) {
  callsConnection(filter: $filter, first: $first, after: $after, sortOrder: $order) {
    edges { cursor node { id from bridgeId } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
KEY = "a-cursor-key-shared-by-replicas"


def connection(gateway: Gateway, **variables: Any) -> dict[str, Any]:
    body = gateway.query(CONNECTION, variables).json()
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["callsConnection"]
    return result


def error_code(gateway: Gateway, **variables: Any) -> str:
    body = gateway.query(CONNECTION, variables).json()
    assert body.get("data") is None or body["data"].get("callsConnection") is None, body
    code: str = body["errors"][0]["extensions"]["code"]
    return code


def test_walks_to_the_end_following_the_upstreams_next_links(
    gateway: Gateway, sandbox: Sandbox, short_list: tuple[str, list[str]]
) -> None:
    number, expected = short_list
    sandbox.reset()
    seen: list[str] = []
    after = None
    slices = 0
    while True:
        page = connection(gateway, filter={"from": number}, first=3, after=after)
        slices += 1
        seen += [edge["node"]["id"] for edge in page["edges"]]
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]

    assert seen == expected
    assert slices == -(-len(expected) // 3)
    # One upstream request per slice, each for the page the previous answer linked to.
    queries = [request["query"] for request in sandbox.requests()]
    encoded = number.replace("+", "%2B")
    assert queries == [f"from={encoded}&page={n}&size=3&sortOrder=desc" for n in range(slices)]


def test_any_edge_cursor_resumes_right_after_its_call(
    gateway: Gateway, short_list: tuple[str, list[str]]
) -> None:
    number, expected = short_list
    first = connection(gateway, filter={"from": number}, first=5)
    middle = first["edges"][1]["cursor"]

    resumed = connection(gateway, filter={"from": number}, first=4, after=middle)

    # The cursor's page was 5 long; the slice reads on into the next page as needed.
    assert [edge["node"]["id"] for edge in resumed["edges"]] == expected[2:6]
    assert resumed["pageInfo"]["hasNextPage"] is (len(expected) > 6)


def test_ascending_order_is_kept_across_slices(
    gateway: Gateway, short_list: tuple[str, list[str]]
) -> None:
    number, expected = short_list
    one = connection(gateway, filter={"from": number}, first=4, order="ASC")
    two = connection(
        gateway, filter={"from": number}, first=4, order="ASC", after=one["pageInfo"]["endCursor"]
    )
    ids = [edge["node"]["id"] for edge in one["edges"] + two["edges"]]
    assert ids == list(reversed(expected))[:8]


def test_a_bridge_is_one_complete_page(gateway: Gateway, sandbox: Sandbox) -> None:
    calls = gateway.query("{ calls(size: 200) { bridgeId } }").json()["data"]["calls"]
    bridge = next(call["bridgeId"] for call in calls if call["bridgeId"])
    sandbox.reset()

    page = connection(gateway, filter={"bridgeId": bridge}, first=1000)

    assert page["edges"]
    assert {edge["node"]["bridgeId"] for edge in page["edges"]} == {bridge}
    assert page["pageInfo"]["hasNextPage"] is False
    [request] = sandbox.requests()
    assert request["query"] == f"bridgeId={bridge}&sortOrder=desc"


@pytest.mark.parametrize(
    ("field", "first"),
    [("bridgeId", 1), ("bridgeId", 2), ("conferenceId", 1), ("conferenceId", 3)],
    ids=["bridge-first-1", "bridge-first-2", "conference-first-1", "conference-first-3"],
)
def test_an_unpaginated_filter_walks_to_the_end_in_small_slices(
    gateway: Gateway, field: str, first: int
) -> None:
    # The upstream answers these filters with every match, whatever `size` says, so a
    # page holds more calls than the query's size: each cursor must still be accepted.
    calls = gateway.query("{ calls(size: 1000) { bridgeId conferenceId } }").json()["data"]
    counts: dict[str, int] = {}
    for call in calls["calls"]:
        if call[field]:
            counts[call[field]] = counts.get(call[field], 0) + 1
    value = max(counts, key=lambda name: counts[name])
    assert counts[value] > 2 * first
    whole = connection(gateway, filter={field: value}, first=1000)
    expected = [edge["node"]["id"] for edge in whole["edges"]]

    seen: list[str] = []
    after = None
    while True:
        page = connection(gateway, filter={field: value}, first=first, after=after)
        seen += [edge["node"]["id"] for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]

    assert seen == expected
    assert len(seen) >= counts[value]


@pytest.mark.parametrize("first", [0, -1, 1001], ids=["zero", "negative", "over-1000"])
def test_first_out_of_range_is_bad_user_input(
    gateway: Gateway, sandbox: Sandbox, first: int
) -> None:
    assert error_code(gateway, first=first) == "BAD_USER_INPUT"
    assert sandbox.requests() == []


def tampered(cursor: str) -> str:
    version, body, mac = cursor.split(".")
    payload = base64.urlsafe_b64decode(body + "==").replace(b'"page":1', b'"page":7')
    assert payload != base64.urlsafe_b64decode(body + "==")
    return ".".join([version, base64.urlsafe_b64encode(payload).rstrip(b"=").decode(), mac])


def test_forged_cursors_are_bad_user_input_and_reach_no_upstream(
    gateway_factory: GatewayFactory, sandbox: Sandbox
) -> None:
    gateway = gateway_factory(cursor_key=KEY)
    cursor = connection(gateway, first=2)["pageInfo"]["endCursor"]
    other_key = CursorCodec(b"some-other-key-of-enough-length").encode(
        Position(ListQuery.create(page=1, size=2))
    )
    sandbox.reset()

    for forged in [
        tampered(cursor),
        other_key,
        cursor[:-2],
        "v1.e30.AAAA",
        "https://evil.example/v1/users/u-demo/calls?page=3",
        "",
    ]:
        assert error_code(gateway, first=2, after=forged) == "BAD_USER_INPUT", forged
    assert sandbox.requests() == []


def test_a_cursor_from_another_filter_is_refused(gateway: Gateway, sandbox: Sandbox) -> None:
    cursor = connection(gateway, first=2)["pageInfo"]["endCursor"]
    assert error_code(gateway, first=2, after=cursor, order="ASC") == "BAD_USER_INPUT"


def test_replicas_with_one_cursor_key_accept_each_others_cursors(
    gateway_factory: GatewayFactory,
) -> None:
    one, two = gateway_factory(cursor_key=KEY), gateway_factory(cursor_key=KEY)
    three = gateway_factory()  # no key: a random one of its own

    first = connection(one, first=2)
    cursor = first["pageInfo"]["endCursor"]
    second = connection(two, first=2, after=cursor)

    ids = [edge["node"]["id"] for edge in first["edges"] + second["edges"]]
    assert ids == [c["id"] for c in one.query("{ calls(size: 4) { id } }").json()["data"]["calls"]]
    assert error_code(three, first=2, after=cursor) == "BAD_USER_INPUT"


BASE = "https://api.example.test/base"
CURRENT = ListQuery.create(from_="+19195551212", page=0, size=3)


@pytest.mark.parametrize(
    ("link", "page"),
    [
        pytest.param(f"{BASE}/v1/users/u-1/calls?from=%2B19195551212&page=1&size=3", 1, id="plain"),
        pytest.param(
            f"{BASE}/v1/users/u-1/calls/?page=2&size=3&sortOrder=Desc", 2, id="slash-case"
        ),
        # RFC 3986 section 6.2.2 and 6.2.3: the same resource in other spellings.
        pytest.param(
            "HTTPS://API.Example.TEST:443/base/v1/users/u-1/calls?page=1", 1, id="case-and-port"
        ),
        pytest.param(f"{BASE}/%76%31/users/%75-1/calls?page=1", 1, id="percent-encoded"),
        pytest.param(f"{BASE}/v1/users/./u-2/../u-1/calls/?page=1", 1, id="dot-segments"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?from=+19195551212&page=1", 1, id="plus-unencoded"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?from=%2b19195551212&page=1", 1, id="lower-hex"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=1#frag", 1, id="fragment-ignored"),
    ],
)
def test_a_next_link_becomes_the_query_for_its_page(link: str, page: int) -> None:
    query = next_query(link, CURRENT, base_url=BASE, user_id="u-1")
    assert query == ListQuery.create(from_="+19195551212", page=page, size=3)


@pytest.mark.parametrize(
    "link",
    [
        pytest.param("https://evil.example/base/v1/users/u-1/calls?page=1", id="other-host"),
        pytest.param("http://api.example.test/base/v1/users/u-1/calls?page=1", id="other-scheme"),
        pytest.param(f"{BASE}/v1/users/u-2/calls?page=1", id="other-user"),
        pytest.param(f"{BASE}/v1/users/u-1/calls/c-1?page=1", id="other-path"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=1&debug=1", id="unknown-param"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=1&page=2", id="repeated-param"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=1&from=%2B1555", id="other-filter"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=-1", id="negative-page"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=1&size=5000", id="size-too-big"),
        pytest.param(f"{BASE}/v1/users/u-1/calls", id="no-page"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=1&sortOrder=up", id="bad-order"),
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=1&sortOrder=asc", id="other-order"),
        pytest.param(f"{BASE}/v1/users/u-1/calls/../../u-2/calls?page=1", id="dots-to-other-user"),
        pytest.param(f"{BASE}/v1/users/u-1%2Fcalls?page=1", id="encoded-slash"),
        pytest.param("https://user@api.example.test/base/v1/users/u-1/calls?page=1", id="userinfo"),
        pytest.param("https://api.example.test:8443/base/v1/users/u-1/calls?page=1", id="port"),
        pytest.param("/base/v1/users/u-1/calls?page=1", id="unresolved-relative"),
        pytest.param("https://[::1/v1", id="not-a-url"),
    ],
)
def test_a_next_link_elsewhere_is_an_upstream_bad_response(link: str) -> None:
    with pytest.raises(UpstreamBadResponse):
        next_query(link, CURRENT, base_url=BASE, user_id="u-1")


def test_a_cursor_round_trips_and_any_change_is_refused() -> None:
    codec = CursorCodec(b"0123456789abcdef")
    position = Position(ListQuery.create(to="sip:a@b.example", page=4, size=10), skip=3)
    cursor = codec.encode(position)
    assert codec.decode(cursor) == position
    for index in range(len(cursor)):
        changed = cursor[:index] + ("A" if cursor[index] != "A" else "B") + cursor[index + 1 :]
        try:
            decoded = codec.decode(changed)
        except BadUserInput:
            continue
        # Base64 padding bits may differ without changing a byte: same position only.
        assert decoded == position


def test_the_cursor_key_reaches_workers_unmasked_and_is_never_logged_in_settings() -> None:
    from gateway.cli import settings_environment
    from gateway.config import load_settings

    settings = load_settings({"GATEWAY_CURSOR_KEY": KEY})
    assert settings_environment(settings)["GATEWAY_CURSOR_KEY"] == KEY
    assert KEY not in repr(settings)
    assert "GATEWAY_CURSOR_KEY" not in settings_environment(load_settings({}))


def test_a_short_cursor_key_stops_start_up_naming_the_setting() -> None:
    from gateway.config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="GATEWAY_CURSOR_KEY"):
        load_settings({"GATEWAY_CURSOR_KEY": "short"})


# -- records left out of a page are reported by the slice that serves their place ----------


def test_a_left_out_record_is_reported_once_by_the_slice_that_covers_it(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    # Two upstream pages of 3 entries, each with one record that cannot be a call (no
    # `from`). Slices of 3 calls: the first ends inside page 1, before its bad record.
    path = "/v1/users/u-demo/calls/"
    fake_upstream.answer(
        path,
        [upstream_call("c-a"), upstream_call("c-bad-1", **{"from": None}), upstream_call("c-b")],
        query={"page": "0", "size": "3", "sortOrder": "desc"},
        header_lines=(("Link", f'<{fake_upstream.url}{path}?page=1&size=3>; rel="next"'),),
    )
    fake_upstream.answer(
        path,
        [upstream_call("c-c"), upstream_call("c-d"), upstream_call("c-bad-2", to=None)],
        query={"page": "1", "size": "3", "sortOrder": "desc"},
    )
    gateway = gateway_factory(upstream_url=fake_upstream.url)

    first = gateway.query(CONNECTION, {"first": 3}).json()
    cursor = first["data"]["callsConnection"]["pageInfo"]["endCursor"]
    second = gateway.query(CONNECTION, {"first": 3, "after": cursor}).json()

    def ids(body: dict[str, Any]) -> list[str]:
        return [edge["node"]["id"] for edge in body["data"]["callsConnection"]["edges"]]

    def warned(body: dict[str, Any]) -> list[str]:
        return [w["callId"] for w in body.get("extensions", {}).get("warnings", [])]

    assert (ids(first), warned(first)) == (["c-a", "c-b", "c-c"], ["c-bad-1"])
    assert (ids(second), warned(second)) == (["c-d"], ["c-bad-2"])
    assert "errors" not in first
    assert "errors" not in second


# -- next links that would loop, that cannot be read, or that are not this page's ------------


@pytest.mark.parametrize(
    ("link", "current"),
    [
        pytest.param(f"{BASE}/v1/users/u-1/calls?page=0&size=3", CURRENT, id="same-page"),
        pytest.param(
            f"{BASE}/v1/users/u-1/calls?page=0&size=3",
            ListQuery.create(from_="+19195551212", page=1, size=3),
            id="back-to-page-0",
        ),
        pytest.param(
            f"{BASE}/v1/users/u-1/calls?page=1&size=3",
            ListQuery.create(from_="+19195551212", page=1, size=3),
            id="identical-query",
        ),
        pytest.param("http://xn--a/base/v1/users/u-1/calls?page=1", CURRENT, id="idna-xn--a"),
        pytest.param("https://xn--/base/v1/users/u-1/calls?page=1", CURRENT, id="idna-xn--"),
        pytest.param("https://xn--zz/base/v1/users/u-1/calls?page=1", CURRENT, id="idna-xn--zz"),
        pytest.param(
            "anchored https://api.example.test/base/v1/users/u-1/calls?page=1", CURRENT, id="anchor"
        ),
    ],
)
def test_a_next_link_that_loops_or_cannot_be_read_is_refused(link: str, current: ListQuery) -> None:
    with pytest.raises(UpstreamBadResponse):
        next_query(link, current, base_url=BASE, user_id="u-1")


def test_an_empty_filter_in_a_next_link_counts_as_absent() -> None:
    link = f"{BASE}/v1/users/u-1/calls?from=%2B19195551212&to=&bridgeId=&page=1&size=3"
    query = next_query(link, CURRENT, base_url=BASE, user_id="u-1")
    assert query == ListQuery.create(from_="+19195551212", page=1, size=3)


def test_an_anchored_next_link_is_kept_only_as_a_mark_and_never_wins() -> None:
    base = f"{BASE}/v1/users/u-1/calls/?page=0"
    target = f"{BASE}/v1/users/u-1/calls/?page=1"
    anchored = f'<{target}>; rel="next"; anchor="http://evil.example/"'
    assert parse_link_header(anchored, base=base) == {"next": ANCHORED + target}
    assert parse_link_header([anchored, f'<{target}>; rel="next"'], base=base) == {"next": target}
    # An anchor naming the answer itself is its own link.
    assert parse_link_header(f'<{target}>; rel="next"; anchor="{base}"', base=base) == {
        "next": target
    }


@settings(max_examples=examples(300), deadline=None)
@given(
    header=st.one_of(
        st.text(max_size=200),
        st.builds(
            lambda host, rest, params: f"<http://{host}/{rest}>; rel=next{params}",
            st.sampled_from(["xn--a", "xn--", "xn--zz", "[::1", "a:b:c", "é.example", "%zz"])
            | st.text(max_size=20),
            st.text(max_size=40),
            st.text(max_size=40),
        ),
    )
)
def test_no_link_header_text_raises_out_of_link_reading(header: str) -> None:
    links = parse_link_header(header, base=f"{BASE}/v1/users/u-1/calls/?page=0")
    if "next" in links:
        with contextlib.suppress(UpstreamBadResponse):
            next_query(links["next"], CURRENT, base_url=BASE, user_id="u-1")


PATH = "/v1/users/u-demo/calls/"


def _warnings(body: dict[str, Any]) -> list[dict[str, Any]]:
    warnings: list[dict[str, Any]] = body.get("extensions", {}).get("warnings", [])
    return warnings


@pytest.mark.parametrize(
    "pages",
    [
        pytest.param({"0": "0"}, id="page-0-links-to-itself"),
        pytest.param({"0": "1", "1": "0"}, id="page-1-links-back-to-0"),
        pytest.param({"0": "1", "1": "1"}, id="page-1-links-to-itself"),
        pytest.param({"0": "xn--a"}, id="idna-host"),
    ],
)
def test_a_next_link_that_does_not_move_forward_ends_the_walk_with_a_warning(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, pages: dict[str, str]
) -> None:
    for page, target in pages.items():
        link = (
            f"<http://xn--a{PATH}?page=1&size=5&sortOrder=desc>"
            if target == "xn--a"
            else f"<{fake_upstream.url}{PATH}?page={target}&size=5&sortOrder=desc>"
        )
        fake_upstream.answer(
            PATH,
            [upstream_call(f"c-{page}-{n}") for n in range(2)],
            query={"page": page, "size": "5", "sortOrder": "desc"},
            header_lines=(("Link", f'{link}; rel="next"'),),
        )
    gateway = gateway_factory(upstream_url=fake_upstream.url)

    ids: list[str] = []
    after = None
    for _ in range(5):
        body = gateway.query(CONNECTION, {"first": 5, "after": after}).json()
        assert "errors" not in body, body
        result = body["data"]["callsConnection"]
        ids += [edge["node"]["id"] for edge in result["edges"]]
        if not result["pageInfo"]["hasNextPage"]:
            break
        after = result["pageInfo"]["endCursor"]
    else:
        pytest.fail("the walk never ended")

    assert len(ids) == len(set(ids))
    assert ids == [f"c-{page}-{n}" for page in sorted(pages) for n in range(2)]
    assert [w["code"] for w in _warnings(body)] == ["UPSTREAM_BAD_RESPONSE"]


def test_a_call_listed_twice_in_one_slice_is_served_once_with_a_warning(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.answer(
        PATH,
        [upstream_call("c-a"), upstream_call("c-b"), upstream_call("c-a")],
        query={"page": "0", "size": "5", "sortOrder": "desc"},
        header_lines=(
            ("Link", f'<{fake_upstream.url}{PATH}?page=1&size=5&sortOrder=desc>; rel="next"'),
        ),
    )
    fake_upstream.answer(
        PATH,
        [upstream_call("c-b"), upstream_call("c-c")],
        query={"page": "1", "size": "5", "sortOrder": "desc"},
    )
    gateway = gateway_factory(upstream_url=fake_upstream.url)

    body = gateway.query(CONNECTION, {"first": 5}).json()

    edges = body["data"]["callsConnection"]["edges"]
    assert [edge["node"]["id"] for edge in edges] == ["c-a", "c-b", "c-c"]
    assert [w["callId"] for w in _warnings(body)] == ["c-a", "c-b"]


@pytest.mark.parametrize(
    ("link", "follows"),
    [
        pytest.param('<{url}{path}?page=1&size=5>; rel="next"; anchor="http://evil.example/"',
                     False, id="anchor-elsewhere"),
        pytest.param('<{url}{path}?page=1&size=5&to=&bridgeId=&sortOrder=desc>; rel="next"',
                     True, id="empty-filters-echoed"),
    ],
)  # fmt: skip
def test_an_anchored_next_link_is_not_followed_and_empty_filters_are_absent(
    gateway_factory: GatewayFactory, fake_upstream: FakeUpstream, link: str, follows: bool
) -> None:
    fake_upstream.answer(
        PATH,
        [upstream_call("c-0")],
        query={"page": "0", "size": "5", "sortOrder": "desc"},
        header_lines=(("Link", link.format(url=fake_upstream.url, path=PATH)),),
    )
    fake_upstream.answer(
        PATH, [upstream_call("c-1")], query={"page": "1", "size": "5", "sortOrder": "desc"}
    )
    gateway = gateway_factory(upstream_url=fake_upstream.url)

    body = gateway.query(CONNECTION, {"first": 5}).json()

    edges = body["data"]["callsConnection"]["edges"]
    assert [edge["node"]["id"] for edge in edges] == (["c-0", "c-1"] if follows else ["c-0"])
    assert len(_warnings(body)) == (0 if follows else 1)
    assert len(fake_upstream.requests) == (2 if follows else 1)
