"""Relay cursors over the upstream's pages, signed so they cannot be forged.

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

import orjson

from gateway.calls import ListQuery
from gateway.errors import BadUserInput, GatewayError

VERSION = "v1"
# A cursor's JSON keys for the filters, each with the `ListQuery` attribute it carries.
# They are the upstream's parameter names, but written down here: they are the format of
# cursors already issued, which must keep decoding whatever the upstream's names become.
_FILTERS = (
    ("bridgeId", "bridge_id"),
    ("conferenceId", "conference_id"),
    ("from", "from_"),
    ("to", "to"),
)
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


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or len(text) % 4 == 1:
        raise ValueError(text)
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
