"""The page an upstream list answer's `Link rel="next"` names, as a checked `ListQuery`.

The upstream's pages link to each other (RFC 8288); the gateway never follows such a URL.
It reads the link against the configured upstream base and the list-calls path and
parameters (`routes`), and rebuilds the next page's query from the values it allows, so a
link can never make the gateway fetch anything else. A link it cannot follow is a reason,
which the caller reports beside the page it already has (`next_link` warnings).

    Link page / size        up to 9 digits, then the list query's own bounds
"""

from __future__ import annotations

from urllib.parse import unquote

from yarl import URL

from gateway.calls import ListQuery
from gateway.errors import GatewayError, UpstreamBadResponse
from gateway.upstream import routes
from gateway.upstream.routes import ANCHORED

_FILTERS = routes.FILTER_PARAMS


def next_query(next_url: str, current: ListQuery, *, base_url: str, user_id: str) -> ListQuery:
    """The upstream's `rel="next"` target as a validated query for the page it names.

    The target (already resolved against the request URL by the upstream client) is
    checked, not followed: once normalised as RFC 3986 section 6 says (scheme and host
    case, default port, percent-encoding, dot segments), it must name the configured
    upstream origin and the caller's own calls path, with only the list parameters and
    the current page's filters and order. The query is then rebuilt from those values,
    so a link can never make the gateway fetch anything else. The page it names must
    come after the current one: a link back to it, or to an earlier page, would make a
    walk loop. An empty parameter (`&to=`) counts as absent. Anything else raises
    `UpstreamBadResponse` with the reason, for the caller to report beside the page.

    Total: whatever the text, reading it raises nothing but `UpstreamBadResponse`
    (URL parsing raises `ValueError`, `UnicodeError` for an odd IDNA host, and others).
    """
    try:
        following = _next_query(next_url, current, base_url=base_url, user_id=user_id)
    except UpstreamBadResponse:
        raise
    except Exception as exc:  # a link's text must never fail the page
        raise _unfollowable(f"it cannot be read as a URL ({type(exc).__name__})") from None
    if following.page <= current.page:
        raise _unfollowable("it does not move forward (it names this page or an earlier one)")
    return following


def _next_query(next_url: str, current: ListQuery, *, base_url: str, user_id: str) -> ListQuery:
    if next_url.startswith(ANCHORED):
        raise _unfollowable("it has an `anchor`, so it is another resource's link, not this page's")
    link, base = _normalised(next_url), _normalised(base_url)
    if link is None or base is None or not link.absolute:
        raise _unfollowable("it is not an absolute URL")
    if (link.scheme, link.host, link.port) != (base.scheme, base.host, base.port) or (
        link.user is not None or link.password is not None
    ):
        raise _unfollowable("it points away from the upstream's origin")
    expected = [*_segments(base), *routes.calls_segments(user_id)]
    if _segments(link) != expected:
        raise _unfollowable("it points away from this user's calls")
    params: dict[str, str] = {}
    for name, value in _query_pairs(link.raw_query_string):
        if not value:
            continue
        if name not in routes.LIST_PARAMS:
            raise _unfollowable(f"it has a parameter this gateway does not know ({name[:40]!r})")
        if name in params:
            raise _unfollowable(f"it repeats `{name}`")
        params[name] = value
    for name, attr in _FILTERS:
        if name in params and params[name] != getattr(current, attr):
            raise _unfollowable(f"it changes the `{name}` filter")
    order = params.get(routes.SORT_ORDER, current.sort_order).lower()
    if order != current.sort_order:
        raise _unfollowable("it changes the sort order")
    try:
        return ListQuery.create(
            bridge_id=current.bridge_id,
            conference_id=current.conference_id,
            from_=current.from_,
            to=current.to,
            page=_integer(params.get(routes.PAGE)),
            size=_integer(params.get(routes.SIZE, str(current.size))),
            sort_order=current.sort_order,
        )
    except (GatewayError, ValueError):
        raise _unfollowable("its `page` or `size` is missing or out of range") from None


def _unfollowable(reason: str) -> UpstreamBadResponse:
    return UpstreamBadResponse(reason)


def _normalised(url: str) -> URL | None:
    # yarl applies RFC 3986 normalisation as it parses: lower-case scheme and host, no
    # default port, percent-encoding in upper case and decoded where unreserved, and
    # dot segments removed; parts and query values are compared decoded.
    try:
        return URL(url)
    except (ValueError, TypeError):
        return None


def _segments(url: URL) -> list[str]:
    # Decoded path segments without the empty ones a leading or trailing slash makes
    # (the documentation shows a trailing slash on the calls path, the SDKs send none).
    parts = list(url.parts)
    if parts and parts[0] == "/":
        parts = parts[1:]
    if parts and parts[-1] == "":
        parts = parts[:-1]
    return parts


def _query_pairs(raw_query: str) -> list[tuple[str, str]]:
    # RFC 3986 query values: `+` is a plus sign here (an E.164 number echoed back
    # unencoded), not the space of HTML forms; commas and colons are data too.
    pairs = []
    for piece in raw_query.split("&"):
        if piece:
            name, _, value = piece.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def _integer(value: str | None) -> int:
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise ValueError(value)
    return int(value)
