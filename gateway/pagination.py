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
from urllib.parse import parse_qsl, urlsplit

import orjson

from gateway.calls import ListQuery
from gateway.errors import BadUserInput, GatewayError, UpstreamBadResponse

VERSION = "v1"
_FILTERS = (
    ("bridgeId", "bridge_id"),
    ("conferenceId", "conference_id"),
    ("from", "from_"),
    ("to", "to"),
)
_KNOWN_PARAMS = frozenset({name for name, _ in _FILTERS} | {"page", "size", "sortOrder"})


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
        if not isinstance(skip, int) or not 0 <= skip <= query.size:
            raise forged
        return Position(query, skip)

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, VERSION.encode() + b"." + body, hashlib.sha256).digest()


def next_query(next_url: str, current: ListQuery, *, base_url: str, user_id: str) -> ListQuery:
    """The upstream's `rel="next"` link as a validated query for the page it names.

    The link is checked, not followed: it must point at the configured upstream, at the
    caller's own calls, with only the list parameters, and the same filters and order as
    the current page. Anything else is the upstream misbehaving (`UPSTREAM_BAD_RESPONSE`).
    """
    bad = UpstreamBadResponse('The upstream sent a `Link rel="next"` this gateway cannot follow.')
    link, base = urlsplit(next_url), urlsplit(base_url)
    path = f"{base.path.rstrip('/')}/v1/users/{user_id}/calls"
    if (
        (link.scheme, link.netloc) != (base.scheme, base.netloc)
        or link.path.rstrip("/") != path
        or link.fragment
    ):
        raise bad
    params: dict[str, str] = {}
    for name, value in parse_qsl(link.query, keep_blank_values=True):
        if name not in _KNOWN_PARAMS or name in params:
            raise bad
        params[name] = value
    filters = {attr: params.get(name) for name, attr in _FILTERS}
    if any(
        value is not None and value != getattr(current, attr) for attr, value in filters.items()
    ):
        raise bad
    order = params.get("sortOrder", current.sort_order).lower()
    if order not in ("asc", "desc"):
        raise bad
    try:
        return ListQuery.create(
            bridge_id=current.bridge_id,
            conference_id=current.conference_id,
            from_=current.from_,
            to=current.to,
            page=_integer(params.get("page")),
            size=_integer(params.get("size", str(current.size))),
            sort_order="asc" if order == "asc" else "desc",
        )
    except (GatewayError, ValueError):
        raise bad from None


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
