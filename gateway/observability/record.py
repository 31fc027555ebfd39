"""The record of one GraphQL request, its request id, and the context variable it rides in.

The record is filled in as the request runs and logged when it ends (see
`gateway.observability.telemetry`, the one module that writes it).
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from collections import Counter
from collections.abc import MutableMapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class RequestRecord:
    """What one GraphQL request did, filled in as it runs and logged when it ends.

    It rides in a context variable, so the parts that notice something (the upstream
    transport, the cache) add to it without being handed the request.
    """

    request_id: str
    method: str
    operation: str | None = None
    status: int | None = None
    error_codes: list[str] = field(default_factory=list)
    # HTTP attempts sent to the upstream, each retry one more: not the distinct asks the
    # loader counts against maxUpstreamRequests (a cache hit sends none).
    upstream_requests: int = 0
    cache: Counter[str] = field(default_factory=Counter)
    trace_id: str | None = None
    # Parsed, validated, with usable credentials: the name may take a metrics slot.
    operation_checked: bool = False

    def log_fields(self, duration: float) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "operation": self.operation,
            "status": self.status,
            "duration_ms": round(duration * 1000, 2),
            "upstream_requests": self.upstream_requests,
            "cache": dict(self.cache) or None,
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


_SCOPE_REQUEST_ID = "gateway.request_id"


def scope_request_id(scope: MutableMapping[str, Any]) -> str:
    """The request id of the request `scope` describes: chosen once, kept in the scope.

    Every layer (the endpoint, the whole-answer cache, the shutdown answer) asks here, so
    a request without an `X-Request-Id` of its own has one id in its answer and its log
    line, not one new id per layer.
    """
    found = scope.get(_SCOPE_REQUEST_ID)
    if isinstance(found, str):
        return found
    given = ""
    for name, value in scope.get("headers") or ():
        if name.lower() == b"x-request-id":
            given = value.decode("latin-1")
            break
    request_id = request_id_from(given)
    scope[_SCOPE_REQUEST_ID] = request_id
    return request_id


_current: ContextVar[RequestRecord | None] = ContextVar("gateway_request", default=None)


def current_request() -> RequestRecord | None:
    """The record of the GraphQL request this code runs for, if any."""
    return _current.get()


def bind_request(record: RequestRecord | None) -> Token[RequestRecord | None]:
    """Make `record` the current request; returns a token for `unbind_request`."""
    return _current.set(record)


def unbind_request(token: Token[RequestRecord | None]) -> None:
    _current.reset(token)
