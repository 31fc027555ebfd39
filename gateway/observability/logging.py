"""Log set-up, and the writer of the one log line each request writes.

Every logger, uvicorn's included, goes through one handler on stderr: JSON lines for
machines, or a compact `key=value` form for people at a terminal. The standard library's
logging is enough here: uvicorn logs through it, so one formatter covers both, where
structlog would need its stdlib bridge to reach uvicorn's records and add nothing we use.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

# Container runtimes split lines longer than 16 KiB, and a split JSON line is two broken
# ones. Every value a line holds may come from outside (an operation name, a header, an
# upstream's text), so each is cut to a bound, with a marker saying how much was cut: the
# message to MAX_MESSAGE_CHARS, every other text to MAX_FIELD_CHARS, a traceback to
# MAX_EXCEPTION_CHARS, and a list to MAX_FIELD_ITEMS items. A JSON line still longer than
# MAX_LINE_BYTES (many fields, characters escaped six bytes each) keeps its time, level,
# logger and message, a shorter traceback and the names of the fields it left out.
MAX_MESSAGE_CHARS = 1024
MAX_FIELD_CHARS = 256
MAX_EXCEPTION_CHARS = 8192
MAX_FIELD_ITEMS = 16
MAX_LINE_BYTES = 16_000


def bounded_text(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """`text`, or its first `limit` characters and a marker saying how many were cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more characters]"


def bounded_value(value: Any) -> Any:
    """A log field's value with every text in it bounded (see `bounded_text`)."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return bounded_text(value)
    if isinstance(value, (list, tuple)):
        items = [bounded_value(item) for item in value[:MAX_FIELD_ITEMS]]
        if len(value) > MAX_FIELD_ITEMS:
            items.append(f"...[{len(value) - MAX_FIELD_ITEMS} more items]")
        return items
    if isinstance(value, dict):
        kept = list(value.items())[:MAX_FIELD_ITEMS]
        bounded = {bounded_text(str(key)): bounded_value(item) for key, item in kept}
        if len(value) > MAX_FIELD_ITEMS:
            bounded["..."] = f"[{len(value) - MAX_FIELD_ITEMS} more items]"
        return bounded
    return bounded_text(str(value))


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: bounded_value(value) for key, value in vars(record).items() if key not in _STANDARD
    }


def _message(record: logging.LogRecord) -> str:
    return bounded_text(record.getMessage(), MAX_MESSAGE_CHARS)


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON: time, level, logger, message, and every `extra` field."""

    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        entry = self._entry(
            record.created,
            record.levelname.lower(),
            record.name,
            _message(record),
            _extra(record),
        )
        if record.exc_info:
            entry["exception"] = bounded_text(
                self.formatException(record.exc_info), MAX_EXCEPTION_CHARS
            )
        return _dump(entry)

    def line(
        self, created: float, level: str, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The line `format` writes for a record with these `extra` fields, without the record."""
        bounded = {key: bounded_value(value) for key, value in fields.items()}
        return _dump(
            self._entry(created, level, name, bounded_text(message, MAX_MESSAGE_CHARS), bounded)
        )

    def _entry(
        self, created: float, level: str, name: str, message: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "time": self._time(created),
            "level": level,
            "logger": name,
            "message": message,
        }
        for key, value in fields.items():
            entry.setdefault(key, value)
        return entry

    def _time(self, created: float) -> str:
        # RFC 3339 in UTC with milliseconds; the part up to the second is reused while
        # it lasts (a busy gateway writes hundreds of lines a second).
        second = int(created)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((created - second) * 1000):03d}+00:00"


_CORE = ("time", "level", "logger", "message")


def _dump(entry: dict[str, Any]) -> str:
    line = orjson.dumps(entry, default=str)
    if len(line) <= MAX_LINE_BYTES:
        return line.decode()
    # Rare: only many long fields, or text that JSON escapes, get here.
    short = {key: entry[key] for key in _CORE}
    if "exception" in entry:
        short["exception"] = bounded_text(str(entry["exception"]), 1024)
    short["fields_left_out"] = [bounded_text(key, 64) for key in entry if key not in short][
        :MAX_FIELD_ITEMS
    ]
    return orjson.dumps(short, default=str).decode()


class ConsoleFormatter(logging.Formatter):
    """Formats a record for people: `12:00:01.123 info  logger: message key=value ...`."""

    def format(self, record: logging.LogRecord) -> str:
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        fields = " ".join(
            f"{key}={orjson.dumps(value, default=str).decode()}"
            for key, value in _extra(record).items()
        )
        line = f"{time} {record.levelname.lower():<7} {record.name}: {_message(record)}"
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            exception = bounded_text(self.formatException(record.exc_info), MAX_EXCEPTION_CHARS)
            line = f"{line}\n{exception}"
        return line


class BatchingStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes log lines in batches: at most every `interval` seconds, at once from warnings up.

    One write and flush per request line cost a busy gateway about a third of its
    throughput on cache hits. Info lines now wait up to `interval` (or until 512 are
    pending); a warning or error writes everything pending immediately, and so do
    `flush()` and the interpreter's exit (`logging.shutdown`).
    """

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        # Not `_closed`: logging.Handler.close sets that to True.
        self._stopping = threading.Event()
        self._interval = interval
        self._flusher = threading.Thread(target=self._flush_regularly, daemon=True)
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Called by Handler.handle with the handler's lock held.
        try:
            self._add(self.format(record), urgent=record.levelno >= logging.WARNING)
        except Exception:
            self.handleError(record)

    def emit_line(self, line: str) -> None:
        """Add a line already formatted at info level (see `RequestLog`)."""
        with self.lock:  # type: ignore[union-attr]
            self._add(line, urgent=False)

    def _add(self, line: str, *, urgent: bool) -> None:
        self._pending.append(line)
        if urgent or len(self._pending) >= 512:
            self._write()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write()

    def close(self) -> None:
        self._stopping.set()
        self.flush()
        super().close()

    def _write(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()

    def _flush_regularly(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.flush()
            except (OSError, ValueError):  # the stream went away: nothing left to do
                return


def configure_logging(
    level: str, log_format: str = "auto", stream: TextIO | None = None, *, batch: bool = False
) -> None:
    """Send every logger, uvicorn's included, through one handler on stderr.

    `batch` writes info lines in batches (see `BatchingStreamHandler`); servers use it,
    tests that read the stream right after a request do not.
    """
    stream = sys.stderr if stream is None else stream
    if log_format == "auto":
        log_format = "console" if stream.isatty() else "json"
    handler = BatchingStreamHandler(stream) if batch else logging.StreamHandler(stream)
    handler.setFormatter(ConsoleFormatter() if log_format == "console" else JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers:
        if isinstance(old, BatchingStreamHandler):
            old.close()  # writes what it holds and stops its flusher
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


class RequestLog:
    """Writes the one info line per request, to wherever logging sends `name` at info.

    When that is only this gateway's own batching JSON handler (a server's set-up), the
    line is formatted and queued directly: the same bytes as through `Logger.info`,
    without a `LogRecord` and the logging module's dispatch, which cost a cache hit a
    quarter of its time. Any other set-up (another handler, a filter, the console format,
    a test's capture) goes through `Logger.info` as usual.
    """

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def enabled(self) -> bool:
        return self._logger.isEnabledFor(logging.INFO)

    def write(self, message: str, fields: dict[str, Any]) -> None:
        handler = self._sole_handler()
        if handler is None:
            self._logger.info(message, extra=fields)
            return
        formatter: JsonFormatter = handler.formatter  # type: ignore[assignment]
        handler.emit_line(formatter.line(time.time(), "info", self._logger.name, message, fields))

    def _sole_handler(self) -> BatchingStreamHandler | None:
        # Walks the loggers as `Logger.callHandlers` would; any doubt means "not direct".
        found: BatchingStreamHandler | None = None
        logger: logging.Logger | None = self._logger
        while logger is not None:
            if logger.filters:
                return None
            for handler in logger.handlers:
                if (
                    found is not None
                    or type(handler) is not BatchingStreamHandler
                    or type(handler.formatter) is not JsonFormatter
                    or handler.filters
                    or handler.level > logging.INFO
                ):
                    return None
                found = handler
            logger = logger.parent if logger.propagate else None
        return found
