from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from gateway.observability.logging import (
    BatchingStreamHandler,
    ConsoleFormatter,
    JsonFormatter,
    RequestLog,
    configure_logging,
)
from gateway.observability.record import RequestRecord
from gateway.sandbox import credential_headers
from gateway.upstream.tally import UpstreamTally
from tests.conftest import DEMO, GatewayFactory, KeepEveryLine, Sandbox, leaks


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """The gateway's log set-up writing JSON to a buffer; the previous set-up restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def request_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["logger"] == "gateway.request"]


def test_one_json_line_per_request_without_secrets(
    gateway_factory: GatewayFactory, sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    gateway = gateway_factory()
    ok = gateway.query(
        "query Two { a: calls(size: 2) { id } b: calls(size: 3) { id } }",
        headers={**credential_headers(DEMO), "X-Request-Id": "req-1"},
    )
    sandbox.faults(fail_status=503)
    failed = gateway.query("query Broken { calls { id } }")

    assert ok.status_code == failed.status_code == 200
    first, second = request_lines(log_stream)
    assert first["request_id"] == "req-1"
    assert first["operation"] == "Two"
    assert first["status"] == 200
    assert first["upstream_requests"] == 2
    assert first["error_codes"] == []
    assert first["cache"] == {"miss": 2}  # two upstream-cache look-ups, both cold
    assert isinstance(first["duration_ms"], float)
    assert first["level"] == "info"
    assert second["request_id"] == failed.headers["x-request-id"]
    assert second["upstream_requests"] == 3  # the first attempt and two retries
    assert second["error_codes"] == ["UPSTREAM_ERROR"]
    everything = log_stream.getvalue()
    for secret in (DEMO.token, DEMO.secret, DEMO.user_id, *credential_headers(DEMO).values()):
        assert secret not in everything


def test_uvicorn_records_share_the_format(log_stream: io.StringIO) -> None:
    # At warning: the in-test servers run uvicorn at log level warning.
    logging.getLogger("uvicorn.error").warning("Started server process [%d]", 42)

    [line] = [json.loads(text) for text in log_stream.getvalue().splitlines()]

    assert line["logger"] == "uvicorn.error"
    assert line["message"] == "Started server process [42]"


def test_console_format_for_people() -> None:
    record = logging.makeLogRecord(
        {"name": "gateway.request", "levelname": "INFO", "msg": "graphql request"}
    )
    record.operation = "Latest"
    record.error_codes = ["UPSTREAM_ERROR"]

    line = ConsoleFormatter().format(record)

    assert line.endswith(
        'info    gateway.request: graphql request  operation="Latest" '
        'error_codes=["UPSTREAM_ERROR"]'
    )
    assert json.loads(JsonFormatter().format(record))["operation"] == "Latest"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("log_format", "stream", "formatter"),
    [
        ("auto", io.StringIO(), JsonFormatter),
        ("auto", _Terminal(), ConsoleFormatter),
        ("json", _Terminal(), JsonFormatter),
        ("console", io.StringIO(), ConsoleFormatter),
    ],
    ids=["auto-pipe", "auto-terminal", "json", "console"],
)
def test_log_format_choice(
    log_format: str, stream: io.StringIO, formatter: type[logging.Formatter]
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", log_format, stream)
        [handler] = root.handlers
        assert type(handler.formatter) is formatter
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_upstream_failures_are_logged_without_credentials_or_error_details(
    gateway_factory: GatewayFactory, sandbox: Sandbox, every_log_line: KeepEveryLine
) -> None:
    gateway = gateway_factory()
    sandbox.faults(fail_status=500)
    before = len(every_log_line.lines)

    response = gateway.query("{ calls { id } }", headers={"x-request-id": "req-upstream-500"})

    assert response.json()["errors"][0]["extensions"]["code"] == "UPSTREAM_ERROR"
    lines = [json.loads(line) for line in every_log_line.lines[before:]]
    [line] = [entry for entry in lines if entry.get("request_id") == "req-upstream-500"]
    assert line["error_codes"] == ["UPSTREAM_ERROR"]
    assert leaks(every_log_line.lines[before:]) == []


def test_the_leak_check_finds_a_credential_however_it_is_logged() -> None:
    # The session-wide check (conftest's every_log_line) must be able to fail: a record
    # carrying the demo account's Authorization header, as an extra field or inside a
    # traceback, is caught.
    formatter = JsonFormatter()
    authorization = credential_headers(DEMO)["Authorization"]
    as_extra = logging.makeLogRecord({"msg": "request", "headers": {"a": authorization}})
    try:
        raise ValueError(f"upstream refused secret {DEMO.secret}")
    except ValueError:
        in_traceback = logging.makeLogRecord({"msg": "boom", "exc_info": sys.exc_info()})

    lines = [formatter.format(as_extra), formatter.format(in_traceback)]

    assert leaks(lines) == lines
    assert leaks([formatter.format(logging.makeLogRecord({"msg": "fine"}))]) == []


def test_batched_lines_wait_for_the_interval_and_warnings_write_at_once() -> None:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=0.3)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.batching")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("first")
        assert stream.getvalue() == ""  # held back

        logger.warning("trouble")
        written = [json.loads(line)["message"] for line in stream.getvalue().splitlines()]
        assert written == ["first", "trouble"]  # in order, with what was pending

        logger.info("later")
        deadline = time.monotonic() + 5
        while "later" not in stream.getvalue():
            assert time.monotonic() < deadline, "the flusher never wrote the pending line"
            time.sleep(0.05)
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_closing_a_batching_handler_writes_what_it_holds() -> None:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=60)
    handler.setFormatter(JsonFormatter())
    handler.handle(logging.makeLogRecord({"msg": "last words", "levelno": logging.INFO}))

    handler.close()

    assert json.loads(stream.getvalue())["message"] == "last words"


def test_a_batching_handler_can_be_closed_twice() -> None:
    # logging.config.dictConfig (uvicorn's, at each server start) closes every handler
    # ever made, closed ones included: logging.Handler.close sets its own `_closed`.
    handler = BatchingStreamHandler(io.StringIO(), interval=60)

    handler.close()
    handler.close()


def test_a_cache_hit_writes_a_line_like_any_request(
    gateway_factory: GatewayFactory, log_stream: io.StringIO
) -> None:
    gateway = gateway_factory(cache_ttl=30)
    query = "query Latest { calls(size: 2) { id } }"

    gateway.query(query, headers={**credential_headers(DEMO), "X-Request-Id": "fill"})
    gateway.query(query, headers={**credential_headers(DEMO), "X-Request-Id": "hit"})

    fill, hit = request_lines(log_stream)
    assert fill["cache"] == {"miss": 1}
    assert fill["upstream_requests"] == 1
    assert set(hit) == set(fill)
    assert hit["request_id"] == "hit"
    assert hit["cache"] == {"response-hit": 1}
    assert hit["upstream_requests"] == 0
    assert (hit["operation"], hit["status"], hit["error_codes"]) == ("Latest", 200, [])


def test_interleaved_requests_each_count_their_own_look_ups_and_upstream_requests(
    gateway_factory: GatewayFactory, sandbox: Sandbox, log_stream: io.StringIO
) -> None:
    # Two requests for one page at once on the gateway's loop: one starts the upstream
    # load (its first attempt fails with 503 and is retried), the other shares it. Each
    # line counts its own look-up, and the two attempts are in the starter's line only,
    # so the lines add up to what the upstream received. A third request later hits.
    gateway = gateway_factory(cache_ttl=30)
    sandbox.faults(latency_ms=300, fail_status=503, fail_count=1)
    query = "query Latest {{ calls(size: 2) {{ id }} }} # {}"

    def ask(name: str) -> httpx.Response:
        # New bytes each: the whole-answer cache must not answer before the upstream cache.
        return gateway.query(
            query.format(name), headers={**credential_headers(DEMO), "X-Request-Id": name}
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(ask, ["a", "b"]))
    answers.append(ask("c"))

    assert [answer.status_code for answer in answers] == [200] * 3
    assert "errors" not in answers[0].json()
    lines = {line["request_id"]: line for line in request_lines(log_stream)}
    shared = sorted((lines[name]["upstream_requests"], lines[name]["cache"]) for name in "ab")
    assert shared == [(0, {"miss": 1}), (2, {"miss": 1})]
    assert (lines["c"]["upstream_requests"], lines["c"]["cache"]) == (0, {"hit": 1})
    assert len(sandbox.requests()) == 2


class _RecordsMade:
    """A log record factory that keeps every record the logging module makes."""

    def __init__(self) -> None:
        self.records: list[logging.LogRecord] = []
        self._make = logging.getLogRecordFactory()

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self._make(*args, **kwargs)
        self.records.append(record)
        return record


def _batching_json() -> BatchingStreamHandler:
    handler = BatchingStreamHandler(io.StringIO(), interval=60)
    handler.setFormatter(JsonFormatter())
    return handler


def _plain_json() -> logging.Handler:
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    return handler


def _batching_console() -> logging.Handler:
    handler = BatchingStreamHandler(io.StringIO(), interval=60)
    handler.setFormatter(ConsoleFormatter())
    return handler


def _filtered(handler: logging.Handler) -> logging.Handler:
    handler.addFilter(lambda record: True)
    return handler


def _at_warning(handler: logging.Handler) -> logging.Handler:
    handler.setLevel(logging.WARNING)
    return handler


@pytest.mark.parametrize(
    ("parent_handlers", "own_handlers", "direct"),
    [
        pytest.param([_batching_json], [], True, id="server-set-up"),
        pytest.param([], [_batching_json], True, id="own-handler-only"),
        pytest.param([_batching_json, _batching_json], [], False, id="two-handlers"),
        pytest.param([_batching_json], [_plain_json], False, id="another-handler-too"),
        pytest.param([_plain_json], [], False, id="plain-stream-handler"),
        pytest.param([_batching_console], [], False, id="console-format"),
        pytest.param([lambda: _filtered(_batching_json())], [], False, id="handler-filter"),
        pytest.param([lambda: _at_warning(_batching_json())], [], False, id="handler-at-warning"),
        pytest.param([], [], False, id="no-handler"),
    ],
)
def test_the_request_line_skips_the_record_only_where_nothing_could_tell(
    parent_handlers: list[Callable[[], logging.Handler]],
    own_handlers: list[Callable[[], logging.Handler]],
    direct: bool,
) -> None:
    parent, logger = logging.getLogger("test.rl"), logging.getLogger("test.rl.request")
    parent.propagate = False
    parent.handlers[:] = [make() for make in parent_handlers]
    logger.handlers[:] = [make() for make in own_handlers]
    parent.setLevel(logging.INFO)
    made = _RecordsMade()
    logging.setLogRecordFactory(made)
    try:
        RequestLog("test.rl.request").write("graphql request", {"request_id": "r-1"})
    finally:
        logging.setLogRecordFactory(made._make)
        for handler in [*parent.handlers, *logger.handlers]:
            handler.close()
        parent.handlers[:], logger.handlers[:] = [], []

    assert (made.records == []) is direct


def test_a_filter_on_the_way_sees_the_request_line() -> None:
    parent, logger = logging.getLogger("test.rl2"), logging.getLogger("test.rl2.request")
    parent.propagate = False
    parent.handlers[:] = [_batching_json()]
    parent.setLevel(logging.INFO)
    seen: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        seen.append(record)
        return True

    logger.addFilter(keep)
    try:
        RequestLog("test.rl2.request").write("graphql request", {"request_id": "r-2"})
    finally:
        logger.filters.clear()
        parent.handlers[0].close()
        parent.handlers[:] = []

    assert [record.request_id for record in seen] == ["r-2"]  # type: ignore[attr-defined]


def _sent(requests: int) -> UpstreamTally:
    tally = UpstreamTally()
    for _ in range(requests):
        tally.request_sent()
    return tally


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(RequestRecord("r-1", "POST"), id="bare"),
        pytest.param(
            RequestRecord(
                "r-2",
                "GET",
                "Latest",
                200,
                ["UPSTREAM_ERROR", "UPSTREAM_ERROR"],
                upstream=_sent(3),
                trace_id="t",
            ),
            id="full",
        ),
    ],
)
@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.9995, 1_799_999_999.123])
def test_the_direct_request_line_is_the_formatted_record(
    record: RequestRecord, created: float
) -> None:
    record.cache["miss"] += 1
    fields = record.log_fields(0.0123)
    as_record = logging.makeLogRecord(
        {"name": "gateway.request", "levelname": "INFO", "msg": "graphql request", **fields}
    )
    as_record.created = created
    formatter = JsonFormatter()

    direct = formatter.line(created, "info", "gateway.request", "graphql request", fields)

    assert direct == formatter.format(as_record)


HUGE = 900_000


def _huge_record(*, many_fields: bool) -> logging.LogRecord:
    try:
        raise ValueError("x" * HUGE)
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.makeLogRecord(
        {
            "name": "gateway.upstream",
            "levelname": "WARNING",
            "msg": "upstream said %s",
            "args": ("m" * HUGE,),
            "exc_info": exc_info,
        }
    )
    record.operation = "N" * HUGE
    record.path = ["a" * HUGE] * 40
    record.other = object()
    if many_fields:
        for i in range(40):
            setattr(record, f"header_{i}", "\x01" * HUGE)  # escaped as six bytes each
    return record


@pytest.mark.parametrize("many_fields", [False, True], ids=["few-fields", "many-fields"])
@pytest.mark.parametrize(
    "formatter", [JsonFormatter(), ConsoleFormatter()], ids=["json", "console"]
)
def test_every_logged_value_is_bounded(formatter: logging.Formatter, many_fields: bool) -> None:
    # Before: a 900 KB operation name (or message, or traceback) made a 900 KB line,
    # which container runtimes split at 16 KiB into broken JSON.
    line = formatter.format(_huge_record(many_fields=many_fields))

    assert f"...[{HUGE + 14 - 1024} more characters]" in line  # "upstream said ", cut
    if isinstance(formatter, ConsoleFormatter):
        return  # for people at a terminal: bounded values, no line budget
    assert len(line.encode()) <= 16_000
    entry = json.loads(line)
    if many_fields:
        assert entry["fields_left_out"][:3] == ["operation", "path", "other"]
        assert entry["exception"].startswith("Traceback")
    else:
        assert entry["operation"] == "N" * 256 + f"...[{HUGE - 256} more characters]"
        assert entry["path"][-1] == "...[24 more items]"
        assert entry["exception"].endswith(" more characters]")


def test_a_huge_operation_name_makes_a_bounded_request_line(
    gateway_factory: GatewayFactory, log_stream: io.StringIO
) -> None:
    # Raised: a document that long is refused before parsing by default (its name never
    # read), and the line must be bounded whatever the setting.
    gateway = gateway_factory(max_query_bytes=2 * HUGE)
    name = "N" * HUGE

    gateway.query(f"query {name} {{ calls(size: 1) {{ id }} }}")

    [line] = [text for text in log_stream.getvalue().splitlines() if "gateway.request" in text]
    assert len(line.encode()) < 16 * 1024
    assert json.loads(line)["operation"] == "N" * 256 + f"...[{HUGE - 256} more characters]"


def test_the_direct_request_line_is_bounded_too() -> None:
    record = RequestRecord("r-1", "X" * HUGE, "N" * HUGE, 200)

    line = JsonFormatter().line(0.0, "info", "gateway.request", "m" * HUGE, record.log_fields(0.1))

    assert len(line.encode()) < 16 * 1024
