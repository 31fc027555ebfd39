"""The page a list answer's `Link rel="next"` names: checked against the upstream's origin,
the caller's calls path and the list parameters, never followed as a URL."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.calls import ListQuery
from gateway.errors import UpstreamBadResponse
from gateway.upstream.client import parse_link_header
from gateway.upstream.next_page import next_query
from gateway.upstream.routes import ANCHORED
from tests.conftest import examples

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
