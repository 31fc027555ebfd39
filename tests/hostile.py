"""A hostile fake upstream on a loopback port: bombs, endless bodies, lying lengths.

A raw asyncio server rather than an ASGI app, because what it sends is exactly what an
ASGI server would refuse to send (a Content-Length that lies, bytes after the body). What
it answers is chosen by the user id in the path, `/v1/users/u-<kind>/calls/`, so one server
serves every kind and every test shares one upstream connection pool, as in production.
Each request is recorded (kind and connection number), so a test can see whether a
connection was reused after a hostile answer.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

MIB = 1 << 20
# The upstream body bound the tests give the gateway (GATEWAY_UPSTREAM_MAX_BODY_BYTES).
BOUND = 10 * MIB
# A gzip or zlib stream of 1 GiB of zero bytes is the same 1 MiB block repeated (each
# ends with a full flush, which resets the compressor); these are its trailers' checks.
_CRC32_OF_1GIB_ZEROS = 0x5B64C2B0
_ADLER32_OF_1GIB_ZEROS = 0xC02D0001
_EMPTY_FINAL_BLOCK = b"\x03\x00"
# One plausible call, for bodies that are valid JSON all the way (the parser's cost).
CALL = (
    b'{"id":"c-abcdefghijklmnopqrst","direction":"in","from":"+19195551234",'
    b'"to":"+19195554321","state":"completed","startTime":"2017-01-01T00:00:00.000Z",'
    b'"sipHeaders":{"X-Header-1":"value-1"}}'
)

# A call with every field, for legitimate pages of 1000 (`page`): ~700 bytes each.
FULL_CALL = (
    b'{"id":"c-abcdefghijklmnopqrst","direction":"out","from":"+19195551234",'
    b'"to":"sip:support@pbx.example.net","state":"completed","recordingEnabled":true,'
    b'"recordingFileFormat":"wav","transcriptionEnabled":false,'
    b'"callbackUrl":"https://callbacks.example.com/catapult/u-demo/calls",'
    b'"callbackHttpMethod":"POST","callbackTimeout":15000,'
    b'"fallbackUrl":"https://fallback.example.com/catapult/calls",'
    b'"startTime":"2017-01-01T00:00:00.000Z","activeTime":"2017-01-01T00:00:05.000Z",'
    b'"endTime":"2017-01-01T00:10:00.000Z","chargeableDuration":600,'
    b'"bridgeId":"brg-abcdefghijklmnopqrst",'
    b'"events":"https://api.example.com/v1/users/u-demo/calls/c-abcdefghijklmnopqrst/events",'
    b'"sipHeaders":{"X-Header-1":"value-1","X-Header-2":"value-2"}}'
)


def bomb(wbits: int) -> bytes:
    """1 GiB of zeros, compressed to ~1 MB: gzip (wbits 31) or zlib `deflate` (wbits 15)."""
    zeros = b"\0" * MIB
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    head = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    if wbits > 15:  # gzip: CRC-32 and size, little-endian
        trailer = struct.pack("<II", _CRC32_OF_1GIB_ZEROS, (1024 * MIB) & 0xFFFFFFFF)
    else:  # zlib: Adler-32, big-endian
        trailer = struct.pack(">I", _ADLER32_OF_1GIB_ZEROS)
    return head + block * 1023 + _EMPTY_FINAL_BLOCK + trailer


@functools.cache
def json_array(size: int) -> bytes:
    """A JSON array of calls of about `size` bytes."""
    count = max(1, size // (len(CALL) + 1))
    return b"[" + b",".join([CALL] * count) + b"]"


# Calls in a `big-page` answer: 9 MB, more than any page may hold.
BIG_PAGE_CALLS = 13_000


@functools.cache
def big_page() -> bytes:
    """A 9 MB list of calls with every field, each with its own id."""
    calls = [
        FULL_CALL.replace(b"c-abcdefghijklmnopqrst", b"c-%020d" % n, 1)
        for n in range(BIG_PAGE_CALLS)
    ]
    return b"[" + b",".join(calls) + b"]"


def json_of_exactly(size: int) -> bytes:
    """A JSON array of calls, padded with trailing whitespace to exactly `size` bytes."""
    body = json_array(size - 4096)
    return body + b" " * (size - len(body))


@dataclass
class Hostile:
    """The running server: its base URL and what it was asked."""

    url: str
    requests: list[tuple[str, int]] = field(default_factory=list)

    def connections_for(self, kind: str) -> set[int]:
        return {number for asked, number in self.requests if asked == kind}


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Server:
    def __init__(self) -> None:
        self.record: list[tuple[str, int]] = []
        self._connections = 0
        self._bombs: dict[int, bytes] = {}

    def _bomb(self, wbits: int) -> bytes:
        if wbits not in self._bombs:
            self._bombs[wbits] = bomb(wbits)
        return self._bombs[wbits]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        number = self._connections
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                path = head.split(b" ", 2)[1].decode("latin-1")
                parts = path.split("/")
                kind = parts[3].removeprefix("u-") if len(parts) > 3 else ""
                self.record.append((kind, number))
                keep = await self.answer(kind, writer)
                await writer.drain()
                if not keep:
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()

    async def answer(self, kind: str, writer: asyncio.StreamWriter) -> bool:
        """Writes the answer of `kind`; whether the connection may serve another request."""
        json = ("content-type", "application/json")
        if kind == "ok":
            body = b"[" + CALL + b"]"
            writer.write(_head(200, [json, ("content-length", str(len(body)))]) + body)
            return True
        if kind == "page":
            body = b"[" + b",".join([FULL_CALL] * 1000) + b"]"
            writer.write(_head(200, [json, ("content-length", str(len(body)))]) + body)
            return True
        if kind == "big-page":
            # 9 MB: 13,000 calls with every field, whatever `size` asked for (at most
            # 1000), and under the per-body bound: only the sum of such bodies is big.
            body = big_page()
            writer.write(_head(200, [json, ("content-length", str(len(body)))]))
            await _send_slowly(writer, body)
            return True
        if kind in ("gzip-bomb", "deflate-bomb", "error-bomb"):
            encoding = "deflate" if kind == "deflate-bomb" else "gzip"
            body = self._bomb(15 if encoding == "deflate" else 31)
            status = 500 if kind == "error-bomb" else 200
            headers = [json, ("content-encoding", encoding), ("content-length", str(len(body)))]
            writer.write(_head(status, headers))
            await _send_slowly(writer, body)
            return True
        if kind in ("br-bomb", "zstd-bomb", "gzip-twice", "compress"):
            encoding = {
                "br-bomb": "br",
                "zstd-bomb": "zstd",
                "gzip-twice": "gzip, gzip",
                "compress": "compress",
            }[kind]
            # What follows the headers is never decoded; any bytes will do.
            body = self._bomb(31)
            headers = [json, ("content-encoding", encoding), ("content-length", str(len(body)))]
            writer.write(_head(200, headers))
            await _send_slowly(writer, body)
            return True
        if kind in ("large-declared", "large-error"):
            body = json_array(50 * MIB)
            status = 503 if kind == "large-error" else 200
            writer.write(_head(status, [json, ("content-length", str(len(body)))]))
            await _send_slowly(writer, body)
            return True
        if kind == "large-chunked":
            writer.write(_head(200, [json, ("transfer-encoding", "chunked")]))
            async for piece in _pieces(json_array(50 * MIB)):
                writer.write(_chunk(piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            return True
        if kind == "large-until-close":
            writer.write(_head(200, [json, ("connection", "close")]))
            async for piece in _pieces(json_array(50 * MIB)):
                writer.write(piece)
                await writer.drain()
            return False
        if kind == "endless":
            writer.write(_head(200, [json, ("transfer-encoding", "chunked")]))
            writer.write(_chunk(b"["))
            piece = b"[0,0,0,0,0,0,0,0],\n" * 4096
            while True:
                writer.write(_chunk(piece))
                await writer.drain()
        if kind.startswith(("at-bound", "over-bound")):
            # The bound after decoding (BOUND), exactly, and one byte more.
            body = json_of_exactly(BOUND + kind.startswith("over-bound"))
            headers = [json]
            if kind.endswith("-gzip"):
                body = zlib.compress(body, 1, wbits=31)
                headers.append(("content-encoding", "gzip"))
            writer.write(_head(200, [*headers, ("content-length", str(len(body)))]))
            await _send_slowly(writer, body)
            return True
        if kind.startswith("early-hints"):
            # A million interim answers (~60 MB) before the final one: each is a whole
            # HTTP answer of its own, which neither the body bound nor a header bound sees.
            # `early-hints-<n>`: n of them, as a real server might send a few.
            hint = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
            count = int(kind.rpartition("-")[2]) if kind[-1].isdigit() else 1_000_000
            for start in range(0, count, 1000):
                writer.write(hint * min(1000, count - start))
                await writer.drain()
            body = b"[" + CALL + b"]"
            writer.write(_head(200, [json, ("content-length", str(len(body)))]) + body)
            return True
        if kind == "long-header":
            # One header line of 100 KB, over aiohttp's 8190-byte bound for a line.
            link = (
                "<http://127.0.0.1/v1/users/u-x/calls/?page=1&x=" + "a" * 100_000 + '>; rel="next"'
            )
            body = b"[]"
            headers = [json, ("link", link), ("content-length", str(len(body)))]
            writer.write(_head(200, headers) + body)
            return True
        if kind == "corrupt-gzip":
            body = b"\x1f\x8b\x08\x00" + b"not gzip at all" * 10
            headers = [json, ("content-encoding", "gzip"), ("content-length", str(len(body)))]
            writer.write(_head(200, headers) + body)
            return True
        if kind == "length-more":
            # Promises 1000 bytes, sends 20 and hangs up.
            writer.write(_head(200, [json, ("content-length", "1000")]) + b"[" + CALL[:19])
            return False
        if kind == "length-less":
            # Declares the first 2 bytes only; what follows is a second, unasked answer
            # that a reused connection would hand to the next request.
            smuggled = b'[{"id":"c-smuggled"}]'
            tail = _head(200, [json, ("content-length", str(len(smuggled)))]) + smuggled
            writer.write(_head(200, [json, ("content-length", "2")]) + b"[]" + tail)
            return True
        writer.write(_head(404, [json, ("content-length", "2")]) + b"{}")
        return True


async def _pieces(body: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def _send_slowly(writer: asyncio.StreamWriter, body: bytes) -> None:
    # In pieces, waiting for the reader: a client that stops reading stops the sending.
    async for piece in _pieces(body, 64 * 1024):
        writer.write(piece)
        await writer.drain()


@contextmanager
def hostile_upstream() -> Iterator[Hostile]:
    """The hostile upstream on a free loopback port, in a thread with its own loop."""
    state = _Server()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, asyncio.Server] = {}

    async def start() -> None:
        holder["server"] = await asyncio.start_server(state.handle, "127.0.0.1", 0)
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the hostile upstream did not start")
    port = holder["server"].sockets[0].getsockname()[1]
    hostile = Hostile(f"http://127.0.0.1:{port}", state.record)
    try:
        yield hostile
    finally:

        async def stop() -> None:
            server = holder["server"]
            server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
