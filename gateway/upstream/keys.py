"""The keyed hash (HMAC-SHA256) under which the upstream layer files what it keeps per caller.

Cache entries, entity-view records, pacing schedules, the credential-pair tables and the
live pollers' identities are all filed under a key made here, never under a credential:
neither a key nor a log line that names one holds a token, a secret or a user id. Each
kind of key is its own method, and its JSON starts with the kind's name, so that no two
kinds, and no two callers, can ever make the same key. The key is `GATEWAY_CACHE_KEY`
(`shared`: replicas and workers make the same keys); without it each process draws a
random one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from typing import Any

import orjson


class KeyedHashes:
    """Makes every key the upstream layer files by: HMAC-SHA256 of a kind and its parts."""

    def __init__(self, secret: bytes | None) -> None:
        self.shared = secret is not None
        secret = secret if secret is not None else secrets.token_bytes(32)
        # Keyed once; each digest starts from a copy, skipping HMAC's key set-up.
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)

    def request(
        self, authorization: str, user_id: str, path: str, params: Sequence[tuple[str, str]]
    ) -> str:
        """The cache key of one upstream request made with these credentials."""
        return self._digest(["request", authorization, user_id, path, sorted(params)])

    def call(self, authorization: str, user_id: str, call_id: str) -> str:
        """The key of one call record in the entity view, under these credentials."""
        return self._digest(["call", authorization, user_id, call_id])

    def account(self, account: str) -> str:
        """The key of an account's pacing schedule (`Credentials.account`: the upstream
        limits accounts, whichever user id they ask for)."""
        return self._digest(["account", account])

    def pair(self, authorization: str, user_id: str) -> str:
        """The key of a credential pair and the user id it asks for, in the lanes' tables."""
        return self._digest(["pair", authorization, user_id])

    def identity(self, authorization: str, user_id: str) -> str:
        """Who whole credentials (token, secret, user id) are, once the upstream accepts them."""
        return self._digest(["identity", authorization, user_id])

    def _digest(self, parts: list[Any]) -> str:
        # A JSON array keeps the parts apart: no choice of values can make two different
        # requests (or two different callers) encode to the same bytes.
        mac = self._mac.copy()
        mac.update(orjson.dumps(parts))
        return mac.hexdigest()
