"""What the gateway knows of one HTTP request before it runs: its id, the verdict on its
credentials, and its body once read. One holder, under one scope key, made once.

    ShutdownMiddleware      request_facts(scope): made here, outermost, for every request
    AnswerCacheMiddleware   .credentials (the key), .read_body(...), .request_id (a hit)
    GraphQLEndpoint         .request_id, .read_body(...), .credentials -> ContextFactory
    live Operations         .request_id, .credentials, for the request they make up

ASGI hands a layer nothing but the scope, so the facts ride in it; but they are made in
one place (`request_facts`, by whichever layer asks first: the outermost one for a request
from the socket, the endpoint or the live operations for one made in process) and only
read after that, inward. The credentials are read from the headers once, so every layer
acts on the same caller (a repeated header could be read two ways); the verdict is
handed on as a value (the context's loader never goes back to the scope). The holder is
one object: a layer's copy of the scope shares it, request id, credentials and body.
Its `repr` shows neither a secret (nor does `Credentials`'s) nor the body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.types import Receive, Scope

from gateway.credentials import CredentialsVerdict, credentials_verdict
from gateway.observability.record import request_id_of
from gateway.request_body import RequestBodyRefusal, read_body

SCOPE_KEY = "gateway.request_facts"


@dataclass(slots=True)
class RequestFacts:
    """One request's id, credentials verdict and body memo; see `request_facts`."""

    request_id: str
    credentials: CredentialsVerdict
    # The decoded body or why it was refused, once a layer read it (`read_body`).
    body: bytes | RequestBodyRefusal | None = field(default=None, repr=False)

    async def read_body(
        self, scope: Scope, receive: Receive, limit: int
    ) -> bytes | RequestBodyRefusal:
        """The request's body (`request_body.read_body`), read at most once: every layer
        that asks gets the same bytes, or the same refusal."""
        if self.body is None:
            self.body = await read_body(scope, receive, limit)
        return self.body


def request_facts(scope: Scope) -> RequestFacts:
    """The facts of the request `scope` describes: made on the first ask, then kept."""
    facts = scope.get(SCOPE_KEY)
    if isinstance(facts, RequestFacts):
        return facts
    headers = scope.get("headers") or ()
    facts = RequestFacts(request_id_of(headers), credentials_verdict(headers))
    scope[SCOPE_KEY] = facts
    return facts
