"""The caller's Catapult credentials: the one reader of the credential headers.

`Authorization: Basic base64(token:secret)` is forwarded upstream in one spelling (`Basic`,
one space, the canonical base64 of the decoded `token:secret`), and
`X-Catapult-User-Id` names the `{userId}` path segment. Every layer that needs them (the
whole-answer cache, the endpoint, the per-operation loader) acts on one verdict,
`credentials_verdict` of the request's raw ASGI header list, made once per request with the
request's other facts (`gateway.request_facts`) and handed on as a value.
The cache and pacing keys are made from that normalised form and the decoded token, never
from the header's spelling: `basic`, `BASIC`, extra spaces after the scheme and optional
whitespace around the value (RFC 9110 OWS, stripped) are one caller, not five. And
the verdict is read once because
a mapping would keep one of two repeated headers (the first or the last, depending on
who built it), so two layers could see two different callers in one request.

Refused with `Unauthenticated` (and so no upstream request and no cache entry):
- either header missing, empty or sent more than once (in any spelling of its name);
- a value with a byte outside printable ASCII (NUL, CR, tab, UTF-8, ...);
- `Authorization` longer than 1024 bytes, not `Basic <base64>` (scheme in any case), or
  whose base64 does not decode to UTF-8 `token:secret` with both parts non-empty;
- a user id that is not `u-` and 1 to 128 letters, digits, `-` or `_`.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Unauthenticated

AUTHORIZATION_HEADER = "authorization"
USER_ID_HEADER = "x-catapult-user-id"
_NAMES = {
    AUTHORIZATION_HEADER.encode(): AUTHORIZATION_HEADER,
    USER_ID_HEADER.encode(): USER_ID_HEADER,
}

# Catapult user ids look like `u-abc123`; the character set keeps the id inside its
# path segment (no `/`, `.`, `%`, `?`, `#`), so it can be put in a URL without escaping.
_USER_ID = re.compile(rb"u-[A-Za-z0-9_-]{1,128}")
MAX_AUTHORIZATION_BYTES = 1024
# Printable ASCII only: a CR, NUL or tab could change the meaning of the header upstream.
_VISIBLE_ASCII = re.compile(rb"[\x20-\x7e]+")


@dataclass(frozen=True, slots=True)
class Credentials:
    """A caller's validated credentials. `repr` never shows the Authorization value."""

    authorization: str = field(repr=False)  # normalised: `Basic <canonical base64>`
    user_id: str
    # The decoded API token: the account the upstream limits, whatever the secret.
    token: str = field(default="", repr=False)

    @property
    def account(self) -> str:
        """Who the upstream limits: the token (the whole header if built without one)."""
        return self.token or self.authorization


# What a request's credential headers come to: the caller, or why there is none.
CredentialsVerdict = Credentials | Unauthenticated


def credentials_verdict(headers: Iterable[tuple[bytes, bytes]]) -> CredentialsVerdict:
    """The verdict on a raw (ASGI) header list: its `Credentials`, or the `Unauthenticated`
    refusal, returned rather than raised so that it can be kept and handed on."""
    try:
        return credentials_from_raw_headers(headers)
    except Unauthenticated as refusal:
        return refusal


def caller(verdict: CredentialsVerdict) -> Credentials:
    """The credentials of `verdict`, or its refusal raised (before any upstream request)."""
    if isinstance(verdict, Credentials):
        return verdict
    # A new exception each time: one raised twice would grow its traceback.
    raise Unauthenticated(verdict.message)


def credentials_from_raw_headers(headers: Iterable[tuple[bytes, bytes]]) -> Credentials:
    """Validate the credential headers of a raw (ASGI) header list."""
    found: dict[str, list[bytes]] = {AUTHORIZATION_HEADER: [], USER_ID_HEADER: []}
    for name, value in headers:
        key = _NAMES.get(name.lower())
        if key is not None:
            found[key].append(value)
    if len(found[AUTHORIZATION_HEADER]) > 1 or len(found[USER_ID_HEADER]) > 1:
        raise Unauthenticated(
            "Send `Authorization` and `X-Catapult-User-Id` once each; this request repeats one."
        )
    authorization = found[AUTHORIZATION_HEADER][0] if found[AUTHORIZATION_HEADER] else b""
    user_id = found[USER_ID_HEADER][0] if found[USER_ID_HEADER] else b""
    if not authorization:
        raise Unauthenticated(
            "Send your Catapult API token and secret as `Authorization: Basic "
            "base64(token:secret)`."
        )
    basic = _basic_token_secret(authorization.strip(_OWS))
    if basic is None:
        raise Unauthenticated(
            "The Authorization header must be `Basic base64(token:secret)` with a "
            "non-empty token and secret."
        )
    user_id = user_id.strip(_OWS)
    if not user_id:
        raise Unauthenticated("Send your Catapult user id in the `X-Catapult-User-Id` header.")
    if not _USER_ID.fullmatch(user_id):
        raise Unauthenticated(
            "The X-Catapult-User-Id header must be a Catapult user id such as `u-abc123` "
            "(letters, digits, `-` and `_` after `u-`)."
        )
    normalised, token = basic
    return Credentials(authorization=normalised, user_id=user_id.decode("ascii"), token=token)


def raw_credential_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The credential headers of a raw header list, repeats kept, for reading later.

    A WebSocket's operations are read as requests of their own, with these headers.
    """
    return [(name, value) for name, value in headers if name.lower() in _NAMES]


def credential_fields(fields: Iterable[tuple[str, Any]]) -> list[tuple[bytes, bytes]]:
    """Credentials given as JSON fields, as the raw headers `credentials_from_raw_headers` reads.

    A WebSocket's `connection_init` payload carries them this way (browsers cannot set
    headers on a WebSocket): `{"Authorization": ..., "X-Catapult-User-Id": ...}`, names in
    any case. Every field of those names is kept, so the same rules apply: one given twice
    is refused, and so is a value that is not a string (kept as a value that fails).
    An empty list when the fields name neither.
    """
    found: list[tuple[bytes, bytes]] = []
    for name, value in fields:
        key = name.lower().encode("utf-8", "replace")
        if key in _NAMES:
            found.append((key, value.encode("utf-8") if isinstance(value, str) else b"\x00"))
    return found


# Optional whitespace around a field value (RFC 9110 section 5.5): not part of the value.
_OWS = b" \t"


def _basic_token_secret(value: bytes) -> tuple[str, str] | None:
    """`Basic <canonical base64>` and the decoded token, or None if `value` is not Basic."""
    if len(value) > MAX_AUTHORIZATION_BYTES or not _VISIBLE_ASCII.fullmatch(value):
        return None
    scheme, _, encoded = value.partition(b" ")
    encoded = encoded.strip(b" ")
    if scheme.lower() != b"basic" or not encoded:
        return None
    try:
        raw = base64.b64decode(encoded, validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    token, colon, secret = decoded.partition(":")
    if not (colon and token and secret and decoded.isprintable()):
        return None
    return "Basic " + base64.b64encode(raw).decode("ascii"), token
