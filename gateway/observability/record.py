"""The record of one GraphQL request, and its request id.

The record is filled in by the layers that hold it (the endpoint or the live operations,
and `gateway.observability.telemetry`, which makes it and writes its line when the
request ends); nothing below them reaches it. What the operation asked of the upstream
comes from the operation's own `UpstreamTally`, which the record's owner attaches before
the operation runs and the line reads at the end.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import STOPPED_CODE
from gateway.upstream.tally import UpstreamTally


@dataclass(slots=True)
class RequestRecord:
    """What one GraphQL request did, filled in as it runs and logged when it ends.

    Only the layers that hold it write it; the upstream cache and client count into the
    operation's tally instead, handed down to them with each ask (`upstream`).
    """

    request_id: str
    method: str
    operation: str | None = None
    status: int | None = None
    error_codes: list[str] = field(default_factory=list)
    # The operation's upstream tally (look-ups by result, HTTP attempts sent, retries
    # included), read when the line is written: a request cut short or failing still
    # says what its operation sent until then. None when no operation ran.
    upstream: UpstreamTally | None = None
    # Look-ups answered before any operation ran (the whole-answer cache's "response-hit").
    cache: Counter[str] = field(default_factory=Counter)
    trace_id: str | None = None
    # Parsed, validated, with usable credentials: the name may take a metrics slot.
    operation_checked: bool = False

    def answered(
        self,
        operation: str | None,
        status: int,
        codes: list[str],
        *,
        checked: bool = False,
        upstream: UpstreamTally | None = None,
    ) -> None:
        """What the request was answered, written once by the layer that holds the record
        (its tally kept when it was handed the record before the operation ran)."""
        self.operation, self.status, self.error_codes = operation, status, codes
        self.operation_checked = checked
        if upstream is not None:
            self.upstream = upstream

    def stopped(self) -> None:
        """The request was cut short (the server's shutdown): the shutdown layer answers
        503 with this code and request id, and the line must say what was answered."""
        self.status, self.error_codes = 503, [STOPPED_CODE]

    def log_fields(self, duration: float) -> dict[str, Any]:
        cache = dict(self.cache)
        upstream = self.upstream
        if upstream is not None:
            for result, count in upstream.cache.items():
                cache[result] = cache.get(result, 0) + count
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "operation": self.operation,
            "status": self.status,
            "duration_ms": round(duration * 1000, 2),
            "upstream_requests": 0 if upstream is None else upstream.requests,
            "cache": cache or None,
            "error_codes": sorted(set(self.error_codes)),
        }
        if self.trace_id is not None:
            fields["trace_id"] = self.trace_id
        return fields


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class _RequestIds:
    # A new id is a random per-process prefix and a counter: unique across processes
    # and restarts like a uuid4, without a system call per request (reading randomness,
    # or even the pid, is a noticeable share of a cache hit). A forked child draws a
    # prefix of its own.

    def __init__(self) -> None:
        self.renew()
        os.register_at_fork(after_in_child=self.renew)

    def renew(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()


def request_id_from(given: str) -> str:
    """The caller's `X-Request-Id` when it is a sane token, else a new id."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return _request_ids.new()


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The request id of a raw (ASGI) header list: its first `X-Request-Id` if sane, else new.

    Called once per request, when its facts are made (`gateway.request_facts`), so a
    request without an id of its own has one id in its answer and its log line.
    """
    for name, value in headers:
        if name.lower() == b"x-request-id":
            return request_id_from(value.decode("latin-1"))
    return request_id_from("")
