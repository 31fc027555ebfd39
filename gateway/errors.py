"""The gateway's errors: one small tree, one stable code per class.

    GatewayError                     INTERNAL_SERVER_ERROR
    ├── BadRequest                   BAD_REQUEST (an HTTP status; nothing executed)
    ├── BadUserInput                 BAD_USER_INPUT
    ├── Unauthenticated              UNAUTHENTICATED
    ├── Forbidden                    FORBIDDEN
    ├── NotFound                     NOT_FOUND
    ├── RateLimited                  RATE_LIMITED (+ retryAfter)
    ├── OperationTooComplex          OPERATION_TOO_COMPLEX
    ├── PersistedQueryNotFound       PERSISTED_QUERY_NOT_FOUND
    └── UpstreamError                UPSTREAM_ERROR
        ├── UpstreamTimeout          UPSTREAM_TIMEOUT
        ├── UpstreamUnavailable      UPSTREAM_UNAVAILABLE
        └── UpstreamBadResponse      UPSTREAM_BAD_RESPONSE

Anything raised during a request that is not a `GatewayError` is a bug: the GraphQL
endpoint masks it as INTERNAL_SERVER_ERROR with a request id and logs the detail.
Messages are shown to callers, so they never carry credentials, and every message is
made `printable` here: many carry upstream text (its error `message`, a call's id).
"""

from __future__ import annotations

import unicodedata
from typing import Any, ClassVar

# Kept although they are control characters: ordinary whitespace.
_WHITESPACE = frozenset("\t\n\r")
# Control (Cc) and format (Cf: bidi overrides such as U+202E, zero-width ones) characters,
# and lone surrogates (Cs), which no JSON encoder here writes.
_UNSHOWN = frozenset({"Cc", "Cf", "Cs"})


def printable(text: str) -> str:
    """`text` with each control, format (bidi override, zero-width) or surrogate
    character replaced by U+FFFD, ordinary whitespace kept.

    For text from outside (the upstream's error messages, a call's id in a message) that
    reaches callers or logs: a NUL cuts C strings short in log pipelines, and a U+202E
    makes a terminal or a page show the rest of the line reversed.
    """
    if text.isprintable():  # the common case, at C speed
        return text
    return "".join(
        "\ufffd" if ch not in _WHITESPACE and unicodedata.category(ch) in _UNSHOWN else ch
        for ch in text
    )


class GatewayError(Exception):
    """Base of every deliberate error; `extensions` is copied into the GraphQL error."""

    code: ClassVar[str] = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str, **extensions: Any) -> None:
        message = printable(message)
        super().__init__(message)
        self.message = message
        self.extra: dict[str, Any] = extensions

    @property
    def extensions(self) -> dict[str, Any]:
        # graphql-core copies a dict `extensions` attribute of the original error into
        # the GraphQL error it builds, so this is all a resolver needs to raise.
        return {"code": self.code, **self.extra}


class BadRequest(GatewayError):
    """The HTTP request is not a well-formed GraphQL request: answered with `status`
    (400, 405, 406, 408, 413, 415) and `headers`, before anything is executed."""

    code = "BAD_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(message, **extensions)
        self.status = status
        self.headers = headers or {}


class BadUserInput(GatewayError):
    code = "BAD_USER_INPUT"


class Unauthenticated(GatewayError):
    code = "UNAUTHENTICATED"


class Forbidden(GatewayError):
    code = "FORBIDDEN"


class NotFound(GatewayError):
    code = "NOT_FOUND"


class RateLimited(GatewayError):
    code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: int, **extensions: Any) -> None:
        super().__init__(message, retryAfter=retry_after, **extensions)
        self.retry_after = retry_after


class OperationTooComplex(GatewayError):
    code = "OPERATION_TOO_COMPLEX"


class PersistedQueryNotFound(GatewayError):
    code = "PERSISTED_QUERY_NOT_FOUND"


class UpstreamError(GatewayError):
    code = "UPSTREAM_ERROR"


class UpstreamTimeout(UpstreamError):
    code = "UPSTREAM_TIMEOUT"


class UpstreamUnavailable(UpstreamError):
    code = "UPSTREAM_UNAVAILABLE"


class UpstreamBadResponse(UpstreamError):
    code = "UPSTREAM_BAD_RESPONSE"


# The code of the answer to a request the server's shutdown cut short: the shutdown
# middleware answers with it and the endpoint logs it.
STOPPED_CODE = GatewayError.code

ERROR_CODES: tuple[str, ...] = (
    GatewayError.code,
    BadRequest.code,
    BadUserInput.code,
    Unauthenticated.code,
    Forbidden.code,
    NotFound.code,
    RateLimited.code,
    OperationTooComplex.code,
    PersistedQueryNotFound.code,
    UpstreamError.code,
    UpstreamTimeout.code,
    UpstreamUnavailable.code,
    UpstreamBadResponse.code,
)
