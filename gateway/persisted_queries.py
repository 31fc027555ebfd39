"""Automatic persisted queries, Apollo's protocol.

A client sends `extensions.persistedQuery = {"version": 1, "sha256Hash": <hex>}`, first
without the document. Unknown hash: the gateway answers `PERSISTED_QUERY_NOT_FOUND` and
the client repeats the request with the document, which registers it (after checking the
hash). From then on the hash alone is enough, so a frontend can send short GET requests
that browsers and CDNs may cache.

The store is in memory, per process, bounded by entry count and total size, least
recently used first out: a forgotten document costs one extra round trip, never an error
the client does not recover from. Documents are not secrets; nothing per-caller is kept.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from gateway.bounded import BoundedCache
from gateway.errors import BadRequest, PersistedQueryNotFound

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class PersistedQueries:
    """The hash -> document store and the protocol's checks."""

    def __init__(self, *, max_entries: int = 2000, max_bytes: int = 8 * 1024 * 1024) -> None:
        self._documents: BoundedCache[str, str] = BoundedCache(
            max_entries=max_entries, max_bytes=max_bytes
        )

    def __len__(self) -> int:
        return len(self._documents)

    def resolve(self, query: str | None, extensions: dict[str, Any] | None) -> str | None:
        """The document to execute: `query` itself, or the one registered under the hash.

        Returns `query` unchanged when the request does not use the extension. Raises
        `PersistedQueryNotFound` for an unknown hash sent without a document, and
        `BadRequest` (400) for a bad extension or a hash that is not the document's.
        """
        extension = (extensions or {}).get("persistedQuery")
        if extension is None:
            return query
        if not isinstance(extension, dict) or extension.get("version") != 1:
            raise BadRequest("Only `persistedQuery` version 1 is supported.")
        digest = extension.get("sha256Hash")
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest.lower()):
            raise BadRequest("`persistedQuery.sha256Hash` must be 64 hex digits.")
        digest = digest.lower()
        if query is None:
            known = self._documents.get(digest)
            if known is None:
                raise PersistedQueryNotFound("PersistedQueryNotFound")
            return known
        if hashlib.sha256(query.encode()).hexdigest() != digest:
            raise BadRequest("provided sha does not match query")
        self._register(digest, query)
        return query

    def _register(self, digest: str, query: str) -> None:
        # UTF-8 bytes: no fewer than the text takes in memory, whatever its characters.
        self._documents.set(digest, query, size=len(query.encode()))
