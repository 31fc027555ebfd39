"""The HTTP server: uvicorn's httptools protocol with bounds on what a client may hold.

uvicorn bounds nothing a client sends before the application sees it: with httptools a
64 MB header line or 100,000 headers are buffered and accepted, a client that drips its
headers or body holds its connection (and a file descriptor) for ever, and a fresh
connection that never speaks is never closed. `GuardedHttpToolsProtocol` adds, per
connection:

- header bounds: the request line and headers together at most `max_header_bytes`
  (counted while they arrive, so an endless header line is cut off, not buffered), each
  header field line at most `max_header_line_bytes`, at most `max_headers` fields; beyond
  any of them: `431`, and the connection is closed (a field over a bound as soon as it
  arrives, so that a flood of fields is never held);
- read deadlines: a request's line and headers must be complete `header_timeout` seconds
  after the connection opened or the request's first byte arrived, its body
  `body_timeout` seconds after its headers; late: `408`, closed. Between requests a
  keep-alive connection may idle `keepalive_timeout` seconds, then it is closed silently;
- a send deadline: an answer must be read by the client `send_timeout` seconds after it
  was written whole, else the connection is aborted and the unread rest dropped (a
  client that never reads would otherwise keep the whole answer in the write buffer, and
  a close waits for that buffer to drain). The same bound holds while an answer is still
  being written (an event stream, a WebSocket): writes that stay paused, the buffer
  full, for `send_timeout` seconds abort the connection;
- at shutdown, a connection whose writes are paused (a client that stopped reading) is
  aborted after `SHUTDOWN_GRACE` seconds: its application's sends, and a WebSocket's
  1012 close behind them, would otherwise wait past `GATEWAY_SHUTDOWN_TIMEOUT`, until
  uvicorn cancels the application (an error in the log) and the close still waits; a
  WebSocket still open `SHUTDOWN_GRACE` seconds after its 1012 is aborted whatever its
  writes (the kernel's buffers may have taken them all, and the closing handshake then
  waits for a client that does not read);
- trailers of a chunked body are never request headers (uvicorn's `on_header` would
  append them to the headers the application reads): they are discarded, and counted
  with the headers against the same bounds (`431`); the bytes of a chunked body that
  are not body (chunk lines and trailers) may not exceed `max_header_bytes` plus a few
  bytes a chunk, so an endless trailer line is cut off too;
- a connection limit per process: one more connection than `max_connections` is
  answered `503` with `Retry-After: 1` at once and closed, so that file descriptors never
  run out (uvicorn's own `limit_concurrency` answers only once the request's headers
  arrive, holding the descriptor until then). One client address (IPv6: its /64) may
  hold at most `max_connections_per_client` of them, and the last `reserved_slots(...)`
  are only for addresses holding none, so a health check gets in while one client, or
  a few, hold everything they may;
- every refusal is closed gracefully: the answer, then the write side shut, then what
  the client still sends is read and dropped for up to a second (at most
  `MAX_DRAINING` connections at once), so the client reads the answer instead of a
  reset.

Only the httptools protocol is used (`http=` is not a setting): h11 bounds the header
bytes itself but not their count, and would need the same guard twice. The limits travel
to worker processes inside the uvicorn `Config` (`GatewayConfig`), which is pickled.
"""

from __future__ import annotations

import asyncio
import http
import ipaddress
import logging
import resource
import weakref
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.draining import announce

log = logging.getLogger("gateway.server")

Phase = Literal["headers", "body", "app", "idle"]


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one client connection may send and how slowly (the `GATEWAY_*` settings)."""

    max_header_bytes: int = 65_536
    max_header_line_bytes: int = 16_384
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0
    send_timeout: float = 60.0
    max_connections: int = 1000
    max_connections_per_client: int = 100


class GatewayConfig(uvicorn.Config):
    """A uvicorn `Config` serving with the guarded protocol under `limits`."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **options: Any) -> None:
        super().__init__(
            app,
            http=GuardedHttpToolsProtocol,
            # uvicorn's own per-request check would answer 503 only after the headers.
            limit_concurrency=None,
            **options,
        )
        self.connection_limits = limits


# Seconds a refused connection is read (and dropped) after its answer, and how many
# connections may be drained at once (beyond that they are closed at once).
DRAIN_SECONDS = 1.0
MAX_DRAINING = 16
# Seconds a connection whose writes are paused may keep them paused once shutdown began
# (at most half the graceful shutdown timeout): a client still reading drains by then.
SHUTDOWN_GRACE = 1.0
# Bytes of chunk framing allowed per chunk besides `max_header_bytes` ("%x\r\n...\r\n").
CHUNK_FRAMING_BYTES = 16


def reserved_slots(max_connections: int) -> int:
    """Connections kept for client addresses that hold none (health checks)."""
    return max(1, min(20, max_connections // 50))


def client_key(client: tuple[str, int] | None) -> str:
    """The address a per-client bound counts by: IPv4 as is, IPv6 by its /64."""
    if client is None:
        return ""
    host = client[0]
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(slots=True)
class _Admissions:
    """The connections one server has admitted, in all and by client address."""

    total: int = 0
    by_client: Counter[str] = field(default_factory=Counter)
    draining: int = 0
    # Set when the server starts shutting down.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


def _release(admissions: _Admissions, client: str) -> None:
    admissions.total -= 1
    admissions.by_client[client] -= 1
    if admissions.by_client[client] <= 0:
        del admissions.by_client[client]


# One per uvicorn server (tests run several in one process).
_admissions: weakref.WeakKeyDictionary[ServerState, _Admissions] = weakref.WeakKeyDictionary()


class _Refusal(Exception):
    """Raised inside a parser callback to stop parsing and answer `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header bounds, read deadlines and a connection cap."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # uvicorn makes the protocol, so the limits come with the config it is given:
        # serving without them would quietly serve with none of the settings' values.
        if not isinstance(config, GatewayConfig):
            raise TypeError("GuardedHttpToolsProtocol serves a GatewayConfig and its limits")
        self.limits = config.connection_limits
        # uvicorn arms its keep-alive timer with this after each response.
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._phase: Phase = "headers"
        self._deadline: asyncio.TimerHandle | None = None
        # Apart from `_deadline`: the next request's header deadline runs meanwhile.
        self._send_deadline: asyncio.TimerHandle | None = None
        # Bytes received since the current request's headers began (an upper bound).
        self._header_bytes = 0
        self._refused = False
        self._draining = False
        self._admitted: str | None = None
        # The request's line and headers (as `_check_headers` counts them), and what a
        # chunked body brought besides body bytes: chunk lines and trailers.
        self._head_bytes = 0
        self._head_count = 0
        self._trailer_bytes = 0
        self._trailer_count = 0
        self._framing_bytes = 0
        self._chunks = 0
        self._body_bytes = 0
        self._admissions = _admissions.setdefault(server_state, _Admissions())
        self._stall = _Stall(self.loop, self.limits.send_timeout, _shutdown_grace(config))

    # -- connection --

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        refusal = self._admit()
        if refusal is not None:
            _warn_refused(self.loop.time(), refusal)
            self._refuse(503, "Too many connections; retry shortly.", retry_after=True)
            return
        self._arm(self.limits.header_timeout, self._headers_late)

    def _admit(self) -> str | None:
        """Count this connection in, or say which limit refuses it."""
        limits, admissions = self.limits, self.admissions
        key = client_key(self.client)
        held = admissions.by_client[key]
        if admissions.total >= limits.max_connections:
            return f"{admissions.total} are open, the GATEWAY_MAX_CONNECTIONS limit"
        if held >= limits.max_connections_per_client:
            return f"{held} are open from one client, the GATEWAY_MAX_CONNECTIONS_PER_CLIENT limit"
        if held and admissions.total >= limits.max_connections - reserved_slots(
            limits.max_connections
        ):
            return f"{admissions.total} are open; the rest are kept for new clients"
        admissions.total += 1
        admissions.by_client[key] = held + 1
        self._admitted = key
        return None

    @property
    def admissions(self) -> _Admissions:
        return self._admissions

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._stall.end()
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None
        admissions = self.admissions
        if self._admitted is not None:
            _release(admissions, self._admitted)
            self._admitted = None
        if self._draining:
            self._draining = False
            admissions.draining -= 1
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The socket is the WebSocket protocol's from now on: no HTTP deadline may fire
        # on it, and it holds its admission until that protocol loses the connection
        # (this one's `connection_lost` is never called again).
        self._disarm()
        admitted, self._admitted = self._admitted, None
        super().handle_websocket_upgrade()
        self._stall.end()
        protocol = self.transport.get_protocol()
        lost = protocol.connection_lost
        admissions = self.admissions
        stall = _Stall(self.loop, self.limits.send_timeout, self._stall.grace)
        stall.watch(protocol, self.transport)
        if admitted is None:
            return

        def connection_lost(exc: Exception | None) -> None:
            _release(admissions, admitted)
            lost(exc)

        # An attribute of this one instance: the transport calls it by name.
        protocol.connection_lost = connection_lost  # type: ignore[method-assign]

    def shutdown(self) -> None:
        self.admissions.stopping.set()
        super().shutdown()
        self._stall.shutdown(self.transport)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._stall.paused(self.transport)

    def resume_writing(self) -> None:
        self._stall.resumed()
        super().resume_writing()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # draining: what a refused client still sends is dropped
        self._unset_keepalive_if_required()
        if self._phase == "idle":
            # The next request on a kept-alive connection: its headers are now on the clock.
            self._start_headers()
        if self._phase == "headers":
            self._header_bytes += len(data)
        in_body, body_before = self._phase == "body", self._body_bytes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as error:
            if isinstance(error.__context__, _Refusal):
                self._refuse(error.__context__.status, error.__context__.message)
                return
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            # As uvicorn does: hand over to WebSockets, or serve the request as plain HTTP.
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._bad_request()
            return
        if self._phase == "headers" and self._header_bytes > self.limits.max_header_bytes:
            # Still no end of the headers: refuse before buffering any more of them.
            self._refuse(431, "The request headers are too large.")
        elif in_body and self._phase == "body":
            # The parser buffers a trailer line whole before handing it over: count what
            # was not body as it arrives, so an endless trailer line is cut off too.
            self._framing_bytes += len(data) - (self._body_bytes - body_before)
            allowed = self.limits.max_header_bytes + CHUNK_FRAMING_BYTES * self._chunks
            if self._framing_bytes > allowed:
                self._refuse(431, "The request trailers are too large.")

    # -- parser callbacks --

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._phase != "headers":
            # A pipelined request begins inside a chunk already counted elsewhere.
            self._start_headers()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._phase != "body":
            # Checked as each field arrives, not only once the headers end: one read may
            # hold 20,000 header fields, each kept (a tuple of two bytes objects) until
            # the end of the headers. Freed, such a burst of small objects leaves the
            # allocator's arenas resident (bench/hostile.py's header flood: +3 MB RSS).
            limits = self.limits
            if len(self.headers) >= limits.max_headers:
                raise _Refusal(431, f"More than {limits.max_headers} request headers.")
            if len(name) + len(value) + 2 > limits.max_header_line_bytes:
                raise _Refusal(431, "A request header line is too long.")
            super().on_header(name, value)
            return
        # A trailer of a chunked body: never a request header (the application has the
        # headers already, and would read a credential or `Accept` sent after them).
        # Dropped, and counted with the headers against their bounds.
        limits = self.limits
        line = len(name) + len(value) + 2
        self._trailer_count += 1
        self._trailer_bytes += line + 2
        if line > limits.max_header_line_bytes:
            raise _Refusal(431, "A request trailer line is too long.")
        if self._head_count + self._trailer_count > limits.max_headers:
            raise _Refusal(431, f"More than {limits.max_headers} request headers and trailers.")
        if self._head_bytes + self._trailer_bytes > limits.max_header_bytes:
            raise _Refusal(431, "The request headers and trailers are too large.")

    def on_chunk_header(self) -> None:
        self._chunks += 1

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_headers_complete(self) -> None:
        # Long answers (event streams) learn here that the server is shutting down.
        announce(self.scope, self.admissions.stopping)  # type: ignore[arg-type]
        self._check_headers()
        self._phase = "body"
        self._header_bytes = 0
        self._trailer_bytes = self._trailer_count = 0
        self._framing_bytes = self._chunks = self._body_bytes = 0
        self._arm(self.limits.body_timeout, self._body_late)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        if self.cycle is not None and self.cycle.response_complete:
            # The answer went out before the body ended: now the connection is idle.
            self._phase = "idle"
            self._arm(self.limits.keepalive_timeout, self.transport.close)
        else:
            self._phase = "app"
        super().on_message_complete()

    def on_response_complete(self) -> None:
        if self._phase == "app":
            self._phase = "idle"
        # A body still arriving after the answer stays under the body deadline; uvicorn
        # arms the keep-alive timer otherwise.
        super().on_response_complete()
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None
        if self.transport.get_write_buffer_size() > 0:
            self._send_deadline = self.loop.call_later(
                self.limits.send_timeout, self._answer_unread
            )

    def _answer_unread(self) -> None:
        self._send_deadline = None
        if self.transport.get_write_buffer_size() > 0:
            # Closing would wait for the client to read; aborting drops the buffer.
            self.transport.abort()

    # -- bounds --

    def _check_headers(self) -> None:
        limits = self.limits
        if len(self.headers) > limits.max_headers:
            raise _Refusal(431, f"More than {limits.max_headers} request headers.")
        total = len(self.url)
        for name, value in self.headers:
            line = len(name) + len(value) + 2
            if line > limits.max_header_line_bytes:
                raise _Refusal(431, "A request header line is too long.")
            total += line + 2
        if total > limits.max_header_bytes:
            raise _Refusal(431, "The request headers are too large.")
        self._head_bytes, self._head_count = total, len(self.headers)

    def _start_headers(self) -> None:
        self._phase = "headers"
        self._header_bytes = 0
        self._arm(self.limits.header_timeout, self._headers_late)

    def _headers_late(self) -> None:
        self._deadline = None
        if self._header_bytes == 0 and self._phase in ("headers", "idle"):
            # Not a byte of a request: an idle connection, closed without an answer.
            self.transport.close()
            return
        self._refuse(408, "The request headers did not arrive in time.")

    def _body_late(self) -> None:
        self._deadline = None
        self._refuse(408, "The request body did not arrive in time.")

    # -- timers and answers --

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _bad_request(self) -> None:
        self.logger.warning("Invalid HTTP request received.")
        self._refuse(400, "Invalid HTTP request received.")

    def _refuse(self, status: int, message: str, *, retry_after: bool = False) -> None:
        """Answer `status` with a plain-text `message` and close, reading nothing more."""
        self._refused = True
        self._disarm()
        self._unset_keepalive_if_required()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.disconnected:
            if not cycle.more_body and not cycle.response_complete:
                # An earlier request on this connection is still being answered: that
                # answer goes out whole, then the connection closes; this one gets none.
                cycle.keep_alive = False
                return
            if cycle.more_body:
                # The application waiting for this body sees the client gone (its answer,
                # if any, is dropped); an answer already under way is cut off by the close.
                cycle.disconnected = True
                cycle.message_event.set()
                if cycle.response_started:
                    self.transport.close()
                    return
        body = message.encode()
        phrase = http.HTTPStatus(status).phrase.encode()
        head = [
            b"HTTP/1.1 %d %s\r\n" % (status, phrase),
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
        ]
        if retry_after:
            head.append(b"retry-after: 1\r\n")
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self._close_gracefully()

    def _close_gracefully(self) -> None:
        """Close after the answer so that the client reads it, not a reset.

        Closing a socket with unread input makes the kernel send a reset, and a reset can
        discard the answer before the client reads it. So: shut the write side (after
        the answer), drop what still arrives until the client closes or `DRAIN_SECONDS`
        pass, then close. At most `MAX_DRAINING` connections drain at once.
        """
        admissions = self.admissions
        transport = self.transport
        if admissions.draining >= MAX_DRAINING or not transport.can_write_eof():
            transport.close()
            return
        admissions.draining += 1
        self._draining = True
        try:
            transport.write_eof()
        except OSError:
            transport.close()
            return
        self.flow.resume_reading()
        self.loop.call_later(DRAIN_SECONDS, transport.close)


_last_refusal_warning = [float("-inf")]


def _shutdown_grace(config: uvicorn.Config) -> float:
    timeout = config.timeout_graceful_shutdown
    return SHUTDOWN_GRACE if timeout is None else min(SHUTDOWN_GRACE, timeout / 2)


class _Stall:
    """Aborts a connection whose writes stay paused (its client does not read): after
    `send_timeout` seconds, or `grace` seconds once the server shuts down.

    Aborting drops the unread buffer and ends the connection at once (a close would wait
    for the client to read it); the application's pending send then fails as for any
    client that went away.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, send_timeout: float, grace: float) -> None:
        self._loop = loop
        self._send_timeout = send_timeout
        self.grace = grace
        self._timer: asyncio.TimerHandle | None = None
        self._is_paused = False
        self._stopping = False

    def watch(self, protocol: Any, transport: asyncio.Transport) -> None:
        """Guard a protocol that took over the transport (a WebSocket's): its pauses and
        its shutdown, wrapped on this one instance (the transport and the server call
        them by name)."""
        pause, resume, shutdown, lost = (
            protocol.pause_writing,
            protocol.resume_writing,
            protocol.shutdown,
            protocol.connection_lost,
        )

        def pause_writing() -> None:
            pause()
            self.paused(transport)

        def resume_writing() -> None:
            self.resumed()
            resume()

        def on_shutdown() -> None:
            shutdown()
            self.closing(transport)

        def connection_lost(exc: Exception | None) -> None:
            self.end()
            lost(exc)

        protocol.pause_writing = pause_writing
        protocol.resume_writing = resume_writing
        protocol.shutdown = on_shutdown
        protocol.connection_lost = connection_lost
        # Paused already, by the handshake's answer or frames before the takeover.
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]:
            self.paused(transport)

    def paused(self, transport: asyncio.Transport) -> None:
        self._is_paused = True
        self._arm(transport, self.grace if self._stopping else self._send_timeout)

    def resumed(self) -> None:
        self._is_paused = False
        self._cancel()

    def shutdown(self, transport: asyncio.Transport) -> None:
        self._stopping = True
        if self._is_paused:
            self._arm(transport, self.grace)

    def closing(self, transport: asyncio.Transport) -> None:
        """A WebSocket told to close at shutdown (1012): its closing handshake needs the
        client to read, and one that stopped reading may do so with its writes never
        paused (the kernel's buffers took them), so it is aborted after `grace` seconds if
        it is still open, whatever its writes."""
        self._stopping = True
        self._cancel()
        self._timer = self._loop.call_later(self.grace, transport.abort)

    def end(self) -> None:
        self._is_paused = False
        self._cancel()

    def _arm(self, transport: asyncio.Transport, seconds: float) -> None:
        self._cancel()
        self._timer = self._loop.call_later(seconds, self._abort, transport)

    def _abort(self, transport: asyncio.Transport) -> None:
        self._timer = None
        if self._is_paused:
            transport.abort()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _warn_refused(now: float, reason: str) -> None:
    # At most once a second: a flood of refused connections must not flood the log too.
    if now - _last_refusal_warning[0] >= 1.0:
        _last_refusal_warning[0] = now
        log.warning("refusing connections: %s", reason)


# Descriptors a worker needs besides client connections and the upstream pool: the
# listening socket, the event loop, logs, Redis, the interpreter's own files.
RESERVED_DESCRIPTORS = 64


def fit_descriptor_limit(limits: ConnectionLimits, upstream_connections: int) -> ConnectionLimits:
    """`limits` with `max_connections` that the process's file descriptor limit can hold.

    The soft limit is raised towards the hard one when it is too low (workers inherit it);
    if that is not enough, `max_connections` is lowered, with a warning, so that the
    connection cap answers 503 before `accept` starts failing (which stalls every client,
    `/healthz` included).
    """
    reserve = upstream_connections + RESERVED_DESCRIPTORS
    needed = limits.max_connections + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return limits
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft >= needed:
        return limits
    fitted = max(1, soft - reserve)
    log.warning(
        "GATEWAY_MAX_CONNECTIONS lowered from %d to %d: the file descriptor limit is %d",
        limits.max_connections,
        fitted,
        soft,
    )
    return replace(limits, max_connections=fitted)
