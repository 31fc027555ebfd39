"""Log set-up and the per-request record behind the one log line each request writes.

Every logger, uvicorn's included, goes through one handler on stderr: JSON lines for
machines, or a compact `key=value` form for people at a terminal. The standard library's
logging is enough here: uvicorn logs through it, so one formatter covers both, where
structlog would need its stdlib bridge to reach uvicorn's records and add nothing we use.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import sys
from collections import Counter
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, message, and every `extra` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extra(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """Formats a record for people: `12:00:01.123 info  logger: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        fields = " ".join(
            f"{key}={orjson.dumps(value, default=str).decode()}"
            for key, value in _extra(record).items()
        )
        line = f"{time} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def configure_logging(level: str, log_format: str = "auto", stream: TextIO | None = None) -> None:
    """Send every logger, uvicorn's included, through one handler on stderr."""
    stream = sys.stderr if stream is None else stream
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter() if log_format == "console" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The formatters use none of the caller's file and line, thread or process names,
    # which the logging module otherwise looks up for every record (its own documented
    # optimisation switches).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # One access line per request comes from the endpoint, with more in it; httpx's own
    # per-request lines would repeat upstream URLs (callers' filters, user ids) at info.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)


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
    upstream_requests: int = 0
    cache: Counter[str] = field(default_factory=Counter)
    trace_id: str | None = None

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
    # and restarts like a uuid4, without reading the system's randomness per request.
    # A forked child (same prefix, same counter) draws a prefix of its own.

    def __init__(self) -> None:
        self._pid = 0
        self._prefix = ""
        self._counter = itertools.count(1)

    def new(self) -> str:
        if self._pid != os.getpid():
            self._pid, self._prefix = os.getpid(), secrets.token_hex(8)
        return f"{self._prefix}{next(self._counter):016x}"


_request_ids = _RequestIds()


def request_id_from(given: str) -> str:
    """The caller's `X-Request-Id` when it is a sane token, else a new id."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return _request_ids.new()


_current: ContextVar[RequestRecord | None] = ContextVar("gateway_request", default=None)


def current_request() -> RequestRecord | None:
    """The record of the GraphQL request this code runs for, if any."""
    return _current.get()


def bind_request(record: RequestRecord | None) -> Token[RequestRecord | None]:
    """Make `record` the current request; returns a token for `unbind_request`."""
    return _current.set(record)


def unbind_request(token: Token[RequestRecord | None]) -> None:
    _current.reset(token)
