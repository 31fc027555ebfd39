"""Relay cursors over the upstream's `Link rel="next"` pages, signed so they cannot be forged.

A cursor names a position in the caller's call list: the upstream page it lies in (its
validated `ListQuery`: filters, page, size, sort order) and how many of that page's calls
come before the position. It never holds a URL: when a cursor comes back, the upstream
request is rebuilt from the query, for the caller's own user path, so a cursor can never
make the gateway fetch anything else.

    v1.<base64url(JSON position)>.<base64url(HMAC-SHA256(key, "v1." + JSON))>

Cursors are signed, not encrypted: a client can read the filters it sent, but a changed
byte fails the signature check and the cursor is refused with `BAD_USER_INPUT`. The key
is `GATEWAY_CURSOR_KEY`; without it each process draws a random one, and a cursor is only
good on the process that issued it (see the setting's description for replicas).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import unquote

import orjson
from yarl import URL

from gateway.calls import ListQuery
from gateway.errors import BadUserInput, GatewayError, UpstreamBadResponse
from gateway.upstream import routes
from gateway.upstream.routes import ANCHORED

VERSION = "v1"
# A cursor's JSON keys are the upstream's parameter names (what a next link carries too).
_FILTERS = routes.FILTER_PARAMS
# The most calls a cursor may skip into one upstream page: far more than any page an
# upstream body within the size limit can hold.
MAX_SKIP = 10_000_000


@dataclass(frozen=True, slots=True)
class Position:
    """A place in the call list: `skip` calls into the upstream page that `query` names."""

    query: ListQuery
    skip: int = 0


class CursorCodec:
    """Issues and checks cursors with one HMAC key."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("a cursor key needs at least 16 bytes")
        self._key = key

    def encode(self, position: Position) -> str:
        query = position.query
        payload = {
            **{name: getattr(query, attr) for name, attr in _FILTERS if getattr(query, attr)},
            "page": query.page,
            "size": query.size,
            "sortOrder": query.sort_order,
            "skip": position.skip,
        }
        body = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        return f"{VERSION}.{_b64(body)}.{_b64(self._sign(body))}"

    def decode(self, cursor: str, argument: str = "after") -> Position:
        """The position a cursor names; `BadUserInput` for anything this gateway did not issue."""
        forged = BadUserInput(
            f"`{argument}` is not a cursor this gateway issued (or it was issued under "
            "another cursor key).",
            argument=argument,
        )
        version, _, rest = cursor.partition(".")
        encoded_body, _, encoded_mac = rest.partition(".")
        if version != VERSION or len(cursor) > 2048:
            raise forged
        try:
            body, mac = _unb64(encoded_body), _unb64(encoded_mac)
        except (binascii.Error, ValueError):
            raise forged from None
        # Compare the signatures before looking inside: nothing unsigned is ever parsed.
        if not hmac.compare_digest(mac, self._sign(body)):
            raise forged
        try:
            payload = orjson.loads(body)
            query = ListQuery.create(
                **{attr: payload.get(name) for name, attr in _FILTERS},
                page=payload["page"],
                size=payload["size"],
                sort_order=payload["sortOrder"],
            )
            skip = payload["skip"]
        except (orjson.JSONDecodeError, KeyError, TypeError, GatewayError):
            raise forged from None
        # The skip was signed with the rest, so it is what the page held when the cursor
        # was issued: not bounded by `size`, since an upstream may answer with more
        # records than asked for (a bridge or conference filter returns every match).
        # A page that has shrunk since is read from its end (walk() copes).
        if type(skip) is not int or not 0 <= skip <= MAX_SKIP:
            raise forged
        return Position(query, skip)

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, VERSION.encode() + b"." + body, hashlib.sha256).digest()


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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or len(text) % 4 == 1:
        raise ValueError(text)
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
