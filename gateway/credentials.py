"""The caller's Catapult credentials, taken from the request headers.

`Authorization: Basic base64(token:secret)` is forwarded upstream unchanged, and
`X-Catapult-User-Id` names the `{userId}` path segment. Both are checked here, before
any upstream request, so that a malformed value never reaches the upstream.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.errors import Unauthenticated

USER_ID_HEADER = "x-catapult-user-id"

# Catapult user ids look like `u-abc123`; the character set keeps the id inside its
# path segment (no `/`, `.`, `%`, `?`, `#`), so it can be put in a URL without escaping.
_USER_ID = re.compile(r"u-[A-Za-z0-9_-]{1,128}")
_MAX_AUTHORIZATION = 1024


@dataclass(frozen=True, slots=True)
class Credentials:
    """A caller's validated credentials. `repr` never shows the Authorization value."""

    authorization: str = field(repr=False)
    user_id: str


def credentials_from_headers(headers: Mapping[str, str]) -> Credentials:
    """Validate the credential headers, or raise `Unauthenticated` saying what is wrong."""
    authorization = headers.get("authorization")
    user_id = headers.get(USER_ID_HEADER)
    if not authorization:
        raise Unauthenticated(
            "Send your Catapult API token and secret as `Authorization: Basic "
            "base64(token:secret)`."
        )
    if not _is_basic_token_secret(authorization):
        raise Unauthenticated(
            "The Authorization header must be `Basic base64(token:secret)` with a "
            "non-empty token and secret."
        )
    if not user_id:
        raise Unauthenticated("Send your Catapult user id in the `X-Catapult-User-Id` header.")
    if not _USER_ID.fullmatch(user_id):
        raise Unauthenticated(
            "The X-Catapult-User-Id header must be a Catapult user id such as `u-abc123` "
            "(letters, digits, `-` and `_` after `u-`)."
        )
    return Credentials(authorization=authorization, user_id=user_id)


def _is_basic_token_secret(value: str) -> bool:
    if len(value) > _MAX_AUTHORIZATION:
        return False
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return False
    token, colon, secret = decoded.partition(":")
    return bool(colon and token and secret) and decoded.isprintable()
