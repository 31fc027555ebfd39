"""The entity view: every call record the gateway has fetched, by id, for the cache TTL.

A list page, a connection slice or a single-call answer brings whole call records; each
is kept under its own key, credential-scoped like every cache entry (an HMAC of the
credentials, user id and call id, never the secret), so that `call(id)` and federation
`_entities` references find a call already fetched without asking the upstream again.

Records are stored as the upstream sent them (raw JSON) with the time they were fetched,
and parsed when read: whatever is built from one expires with the answer it came from.
The store is the upstream cache's kind (memory, bounded; or Redis, shared by replicas).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.credentials import Credentials
from gateway.upstream.cache import Store
from gateway.upstream.keys import KeyedHashes


@dataclass(frozen=True, slots=True)
class KnownCall:
    """A call record from the entity view: the upstream's JSON and when it was fetched."""

    raw: Any
    fetched_at: float


def calls_in_list(body: Any) -> list[tuple[str, Any]]:
    """The (id, record) pairs of a list body; anything not a call with an id is skipped."""
    if not isinstance(body, list):
        return []
    return [
        (raw["id"], raw)
        for raw in body
        if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]
    ]


def call_in_answer(body: Any) -> list[tuple[str, Any]]:
    """The (id, record) pair of a single-call body, if it is one."""
    return calls_in_list([body])


class EntityView:
    """Call records by (credentials, call id), kept for `ttl` seconds."""

    def __init__(self, store: Store, keys: KeyedHashes, *, ttl: float, owns_store: bool) -> None:
        self._store = store
        # With Redis the view shares the upstream cache's connection, which that closes.
        self._owns_store = owns_store
        self._keys = keys
        self._ttl = ttl

    def _key(self, credentials: Credentials, call_id: str) -> str:
        return self._keys.call(credentials.authorization, credentials.user_id, call_id)

    async def remember(
        self, credentials: Credentials, calls: Iterable[tuple[str, Any]], fetched_at: float
    ) -> None:
        """Keep each record; a store that fails keeps nothing and says so in its state."""
        entries = [
            (self._key(credentials, call_id), orjson.dumps([fetched_at, raw]))
            for call_id, raw in calls
        ]
        if entries:
            await self._store.set_many(entries, self._ttl)

    async def recall(
        self, credentials: Credentials, call_ids: Sequence[str]
    ) -> dict[str, KnownCall]:
        """The records of `call_ids` that are in the view (a failing store has none)."""
        if not call_ids:
            return {}
        found = await self._store.get_many([self._key(credentials, i) for i in call_ids])
        known: dict[str, KnownCall] = {}
        for call_id, data in zip(call_ids, found, strict=True):
            if data is not None:
                fetched_at, raw = orjson.loads(data)
                known[call_id] = KnownCall(raw, fetched_at)
        return known

    async def close(self) -> None:
        if self._owns_store:
            await self._store.close()

    def state(self) -> dict[str, Any]:
        return self._store.state()
