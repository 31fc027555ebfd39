"""The call-history domain: validated list queries and tolerantly parsed call records.

Nothing here imports HTTP or GraphQL code. The upstream's routes turn a `ListQuery` into
query parameters (`upstream/routes.py`), this module turns a JSON body into `CallRecord`s,
and the schema turns records into GraphQL.
`CALL_FIELDS` is the one list of a call's fields: the parser, the schema's `Call` type and
the compiled path (fastpath.py) are all built from it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from itertools import islice
from typing import Any, Literal

import orjson

from gateway.errors import BadUserInput, UpstreamBadResponse

MAX_PAGE_SIZE = 1000
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
SortOrderValue = Literal["asc", "desc"]

_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
# user@host[:port][;params], as Catapult accepts them (`sip:someone@somewhere.com`).
_SIP_URI = re.compile(
    r"sips?:[A-Za-z0-9._~!$&'()*+,=%-]{1,128}@[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?"
    r"(;[A-Za-z0-9._=-]{1,64}){0,8}"
)
# Ids go into a path segment or a query value. Unreserved characters only, no leading
# dot, so that `..`, `/`, `?`, `#`, `%` and whitespace can never change the URL's meaning.
_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._~-]{0,127}")


def validate_id(value: str, argument: str) -> str:
    """Return `value` if it is safe as a Catapult id, else raise `BadUserInput`."""
    if not _ID.fullmatch(value) or ".." in value:
        raise BadUserInput(
            f"`{argument}` must be a Catapult id: up to 128 letters, digits, `-`, `_`, `.` "
            "or `~`, not starting with a dot.",
            argument=argument,
        )
    return value


def validate_number(value: str, argument: str) -> str:
    """Return `value` if it is an E.164 number or a SIP URI, else raise `BadUserInput`."""
    if not (_E164.fullmatch(value) or _SIP_URI.fullmatch(value)):
        raise BadUserInput(
            f"`{argument}` must be an E.164 number such as `+19195551212` or a SIP URI "
            "such as `sip:someone@example.com`.",
            argument=argument,
        )
    return value


@dataclass(frozen=True, slots=True)
class ListQuery:
    """One validated "list calls" request; build it with `ListQuery.create`."""

    bridge_id: str | None = None
    conference_id: str | None = None
    from_: str | None = None
    to: str | None = None
    page: int = 0
    size: int = 25
    sort_order: SortOrderValue = "desc"

    @classmethod
    def create(
        cls,
        *,
        bridge_id: str | None = None,
        conference_id: str | None = None,
        from_: str | None = None,
        to: str | None = None,
        page: int = 0,
        size: int = 25,
        sort_order: SortOrderValue = "desc",
    ) -> ListQuery:
        """Validate every argument; raises `BadUserInput` naming the first bad one."""
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise BadUserInput(
                f"`size` must be between 1 and {MAX_PAGE_SIZE} (got {size}).", argument="size"
            )
        if page < 0:
            raise BadUserInput(f"`page` must be 0 or more (got {page}).", argument="page")
        return cls(
            bridge_id=None if bridge_id is None else validate_id(bridge_id, "filter.bridgeId"),
            conference_id=(
                None if conference_id is None else validate_id(conference_id, "filter.conferenceId")
            ),
            from_=None if from_ is None else validate_number(from_, "filter.from"),
            to=None if to is None else validate_number(to, "filter.to"),
            page=page,
            size=size,
            sort_order=sort_order,
        )

    @property
    def paginated(self) -> bool:
        """False when the upstream returns every match at once (bridge or conference)."""
        return self.bridge_id is None and self.conference_id is None

    def as_sent(self) -> ListQuery:
        """The query as the upstream reads it: one that is not paginated sends no page or
        size, so all its pages are one request (and share one answer)."""
        if self.paginated:
            return self
        return replace(self, page=0, size=MAX_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class Odd:
    """A field value the upstream sent outside its documented shape."""

    value: Any

    def describe(self) -> str:
        """The value as the upstream wrote it (JSON), shortened for a message."""
        value = self.value
        if isinstance(value, str) and len(value) > 80:
            value = value[:80]  # encode a megabyte string only to cut it at 80
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True, slots=True)
class TooMany(Odd):
    """A collection with more entries than the gateway serves: the first ones (`kept`)
    are served, with a warning, the rest dropped."""

    kept: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call as the upstream described it, normalised. Optional fields may be `Odd`."""

    id: str
    direction: str | Odd  # "in" | "out"; anything else reads as UNKNOWN
    from_: str
    to: str
    state: str | Odd  # one of STATES; anything else reads as UNKNOWN
    start_time: datetime | Odd | None = None
    active_time: datetime | Odd | None = None
    end_time: datetime | Odd | None = None
    callback_url: str | Odd | None = None
    callback_http_method: str | Odd | None = None  # "GET" | "POST"
    callback_timeout: int | Odd | None = None
    fallback_url: str | Odd | None = None
    bridge_id: str | Odd | None = None
    conference_id: str | Odd | None = None
    chargeable_duration: int | Odd | None = None
    recording_enabled: bool | Odd | None = None
    recording_file_format: str | Odd | None = None  # "wav" | "mp3"
    transcription_enabled: bool | Odd | None = None
    sip_headers: tuple[tuple[str, str], ...] | Odd = ()  # TooMany past MAX_SIP_HEADERS
    events_url: str | Odd | None = None


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that cannot be a `Call` at all (not an object, no id, no `from` or `to`).

    `before` is how many readable calls of its page came before it, so that a slice of
    the page reports only the records that lay within it.
    """

    call_id: str | None
    reason: str
    before: int = 0


DIRECTIONS = frozenset({"in", "out"})
# The documented five, and `error`, which Bandwidth's C# SDK lists as a call state.
STATES = frozenset({"started", "rejected", "active", "completed", "transferring", "error"})
HTTP_METHODS = frozenset({"GET", "POST"})
FILE_FORMATS = frozenset({"wav", "mp3"})


# How deep a value below a record's field is kept: a field holds a scalar, `sipHeaders`
# an object of scalars; anything deeper is odd whatever it holds.
MAX_FIELD_DEPTH = 3
# SIP headers served per call. Catapult documents up to 5 custom headers; a call with
# more is served with its first MAX_SIP_HEADERS and a warning (200,000 headers in one call
# took 40 MB). Any container below a record keeps at most one entry more, so that the
# parser can tell a cut one from one that was whole.
MAX_SIP_HEADERS = 25
_MAX_CONTAINER_ENTRIES = MAX_SIP_HEADERS + 1
_CONTAINERS = (dict, list)


def slim_body(body: Any) -> Any:
    """An upstream body with only what the gateway reads: the known fields of each record.

    Unknown fields are dropped (the cache keeps less, and no client can ask for them), and
    containers nested deeper than the records can hold are emptied, keeping their kind
    (a list stays a list, an object an object), so the record parser decides as it would
    have: orjson reads 1024 levels but writes only 254, so a deep value could not even be
    cached or described.
    """
    if isinstance(body, list):
        return [_slim_record(entry) for entry in body]
    return _slim_record(body)


def _slim_record(raw: Any) -> Any:
    if isinstance(raw, dict):
        # Scalars (most fields) are kept as they are without a call: ~15 calls a record
        # were ~7% of a cache miss's instructions (300k of 4.1M, callgrind).
        return {
            key: _bounded(value, MAX_FIELD_DEPTH) if isinstance(value, _CONTAINERS) else value
            for key in WIRE_KEYS
            if (value := raw.get(key)) is not None
        }
    return _bounded(raw, MAX_FIELD_DEPTH)


def _bounded(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        if depth <= 0:
            return {}
        # Cut only when over: islice on every (short) object cost more than the copy.
        entries = (
            value.items()
            if len(value) <= _MAX_CONTAINER_ENTRIES
            else islice(value.items(), _MAX_CONTAINER_ENTRIES)
        )
        return {
            key: _bounded(item, depth - 1) if isinstance(item, _CONTAINERS) else item
            for key, item in entries
        }
    if isinstance(value, list):
        if depth <= 0:
            return []
        items = value if len(value) <= _MAX_CONTAINER_ENTRIES else value[:_MAX_CONTAINER_ENTRIES]
        return [
            _bounded(item, depth - 1) if isinstance(item, _CONTAINERS) else item for item in items
        ]
    return value


def parse_call_list(body: Any) -> tuple[list[CallRecord], list[BadRecord]]:
    """Parse a list body; a body that is not a JSON array raises `UpstreamBadResponse`."""
    if not isinstance(body, list):
        raise UpstreamBadResponse("The upstream answered a call list that is not a JSON array.")
    records: list[CallRecord] = []
    bad: list[BadRecord] = []
    for raw in body:
        parsed = parse_call(raw)
        if isinstance(parsed, CallRecord):
            records.append(parsed)
        else:
            bad.append(replace(parsed, before=len(records)))
    return records, bad


def parse_call(raw: Any) -> CallRecord | BadRecord:
    """Parse one call object; any field that is off becomes `Odd`, never an error.

    Only a record without the fields a `Call` cannot do without (its id, `from`, `to`)
    is a `BadRecord`. An unknown `direction` or `state` is kept as `Odd`: the schema
    shows it as UNKNOWN, so that a value the upstream adds one day never breaks a client.
    """
    if not isinstance(raw, dict):
        return BadRecord(None, f"a list entry that is not an object ({Odd(raw).describe()})")
    call_id = raw.get("id")
    if not isinstance(call_id, str) or not call_id:
        return BadRecord(None, "a call without an id")
    for field in _ESSENTIAL:
        value = raw.get(field.wire)
        if not isinstance(value, str) or not value:
            return BadRecord(call_id, f"call {call_id} without `{field.wire}`")
    get = raw.get
    return CallRecord(*[parse(get(wire)) for wire, parse in _PARSERS])


def parse_timestamp(value: Any) -> datetime | Odd | None:
    """ISO 8601 in the upstream's variants, or epoch milliseconds; naive means UTC."""
    if value is None:
        return None
    if isinstance(value, bool):
        return Odd(value)
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return Odd(value)
    if isinstance(value, str):
        # RFC 3339 allows `t` and `z` in either case; Python 3.11 reads only upper case
        # (and reads fractions, `,` decimals and hour-only offsets such as `-02` itself).
        text = value.strip().upper()
        if not text.isascii():
            return Odd(value)
        try:
            parsed: datetime | None = datetime.fromisoformat(text)
        except ValueError:
            # Epoch milliseconds as text; past 18 digits it is no date (and int() of a
            # long digit string is slow, then refused past 4300 digits).
            if text.isascii() and text.isdigit() and len(text) <= 18:
                return parse_timestamp(int(text))
            parsed = _leap_second(text)
        if parsed is None:
            return Odd(value)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return Odd(value)


_LEAP_SECOND = re.compile(r"(.*[T ]\d\d:\d\d:)60((?:[.,]\d+)?(?:Z|[+-]\d\d(?::?\d\d)?)?)")


def _leap_second(text: str) -> datetime | None:
    # RFC 3339 allows a leap second (`23:59:60Z`); Python's datetime has none, so it
    # reads as the first instant after it, as most time libraries do.
    match = _LEAP_SECOND.fullmatch(text)
    if match is None:
        return None
    try:
        return datetime.fromisoformat(f"{match[1]}59{match[2]}") + timedelta(seconds=1)
    except (ValueError, OverflowError):
        return None


def _string(value: Any) -> str | Odd | None:
    if value is None or isinstance(value, str):
        return value
    return Odd(value)


def parse_integer(value: Any) -> int | Odd | None:
    """A 32-bit integer (GraphQL's Int), tolerating integral floats and digit strings."""
    if value is None:
        return None
    number: Any = value
    if isinstance(value, bool):
        return Odd(value)
    if (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and _is_ascii_integer(value)
    ):
        number = int(value)
    if not isinstance(number, int) or not _INT_MIN <= number <= _INT_MAX:
        return Odd(value)
    return number


def _is_ascii_integer(text: str) -> bool:
    # str.isdigit() also accepts "²" and other digits int() refuses.
    # At most 11 digits: anything longer is outside 32 bits anyway, and int() of a long
    # digit string is slow, then refused past 4300 digits.
    digits = text.strip().removeprefix("-")
    return digits.isascii() and digits.isdigit() and len(digits) <= 11


def parse_boolean(value: Any) -> bool | Odd | None:
    """A boolean, tolerating "true"/"false" strings."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return value.lower() == "true"
    return Odd(value)


def _choice(
    value: Any, allowed: frozenset[str], normalise: Callable[[str], str], required: bool
) -> str | Odd | None:
    if value is None and not required:
        return None
    if isinstance(value, str) and normalise(value) in allowed:
        return str(normalise(value))
    return Odd(value)


def _sip_headers(value: Any) -> tuple[tuple[str, str], ...] | Odd:
    if value is None:
        return ()
    if not isinstance(value, dict):
        return Odd(value)
    headers = []
    for name, header_value in value.items():
        if header_value is None or isinstance(header_value, dict | list):
            return Odd(value)
        # A number or boolean value is still a header value; keep it as the text it was.
        text = header_value if isinstance(header_value, str) else _json_scalar(header_value)
        headers.append((str(name), text))
        if len(headers) > MAX_SIP_HEADERS:
            # Served cut, with a warning: the headers are still the call's.
            return TooMany(value, tuple(headers[:MAX_SIP_HEADERS]))
    return tuple(headers)


def _json_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- the field table ------------------------------------------------------------------------
#
# One entry per field of a call, in the schema's order (also `CallRecord`'s, which
# `parse_call` fills positionally). What a kind means:
#   id, text   a string (an id is an `ID` in the schema); when required, a record without
#              it cannot be a call at all (`BadRecord`)
#   choice     one of `choices`, compared after `case` (the upstream mixes `get` and `GET`);
#              a required one is served as UNKNOWN when off, an optional one as null
#   instant    a timestamp (`parse_timestamp`); integer, boolean: `parse_integer`, ...
#   headers    the SIP headers object, served as a list of name/value pairs
CallFieldKind = Literal["id", "text", "choice", "instant", "integer", "boolean", "headers"]


def _essential(value: Any) -> Any:
    # Checked by `parse_call` before any field is parsed: a non-empty string.
    return value


@dataclass(frozen=True, slots=True)
class CallField:
    """One field of a call: its schema name, its upstream key, its kind and its meaning."""

    name: str  # the GraphQL field name
    wire: str  # the upstream JSON key
    attribute: str  # the `CallRecord` attribute
    kind: CallFieldKind
    description: str  # the schema's description of the field
    required: bool = False  # non-null in the schema
    choices: frozenset[str] = frozenset()  # kind "choice": the values, after `case`
    case: Literal["lower", "upper"] = "lower"
    parse: Callable[[Any], Any] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "parse", self._parser())

    def _parser(self) -> Callable[[Any], Any]:
        kind = self.kind
        if kind in ("id", "text"):
            return _essential if self.required else _string
        if kind == "choice":
            normalise = str.lower if self.case == "lower" else str.upper
            allowed, required = self.choices, self.required
            return lambda value: _choice(value, allowed, normalise, required)
        return {
            "instant": parse_timestamp,
            "integer": parse_integer,
            "boolean": parse_boolean,
            "headers": _sip_headers,
        }[kind]


CALL_FIELDS: tuple[CallField, ...] = (
    CallField("id", "id", "id", "id", "The unique id of the call, e.g. `c-abc123`.",
              required=True),
    CallField("direction", "direction", "direction", "choice",
              "Whether the call was incoming or outgoing.", required=True, choices=DIRECTIONS),
    CallField("from", "from", "from_", "text",
              "Who made the call: an E.164 number (`+15555555555`) or a SIP address.",
              required=True),
    CallField("to", "to", "to", "text",
              "Who received the call: an E.164 number (`+15555555555`) or a SIP address.",
              required=True),
    CallField("state", "state", "state", "choice", "Where the call is in its life.",
              required=True, choices=STATES),
    CallField("startTime", "startTime", "start_time", "instant", "When the call was created."),
    CallField("activeTime", "activeTime", "active_time", "instant",
              "When the call was answered; null if it never was."),
    CallField("endTime", "endTime", "end_time", "instant",
              "When the call ended; null while it is still going."),
    CallField("callbackUrl", "callbackUrl", "callback_url", "text",
              "The URL that receives this call's events."),
    CallField("callbackHttpMethod", "callbackHttpMethod", "callback_http_method", "choice",
              "How events are sent to `callbackUrl` (POST by default); the upstream's "
              "`get`/`post` in any case read as GET/POST.",
              choices=HTTP_METHODS, case="upper"),
    CallField("callbackTimeout", "callbackTimeout", "callback_timeout", "integer",
              "How long, in milliseconds, the platform waits for `callbackUrl` to answer."),
    CallField("fallbackUrl", "fallbackUrl", "fallback_url", "text",
              "The URL that receives events when `callbackUrl` fails."),
    CallField("bridgeId", "bridgeId", "bridge_id", "id", "The bridge the call is in, if any."),
    CallField("conferenceId", "conferenceId", "conference_id", "id",
              "The conference the call is in, if any."),
    CallField("chargeableDuration", "chargeableDuration", "chargeable_duration", "integer",
              "The number of seconds the call is billed for."),
    CallField("recordingEnabled", "recordingEnabled", "recording_enabled", "boolean",
              "Whether the call was recorded."),
    CallField("recordingFileFormat", "recordingFileFormat", "recording_file_format", "choice",
              "The file format of the call's recordings.", choices=FILE_FORMATS),
    CallField("transcriptionEnabled", "transcriptionEnabled", "transcription_enabled", "boolean",
              "Whether the call's recordings were transcribed automatically."),
    CallField("sipHeaders", "sipHeaders", "sip_headers", "headers",
              "Custom SIP headers sent with the call (up to 5); empty when there were none."),
    # The upstream names its events link `events`; the schema says what it is.
    CallField("eventsUrl", "events", "events_url", "text",
              "The upstream URL of this call's events."),
)  # fmt: skip
# The fields without which a record cannot be a call, after its id (`parse_call`).
_ESSENTIAL = tuple(
    field
    for field in CALL_FIELDS
    if field.required and field.kind in ("id", "text") and field.wire != "id"
)
# What `parse_call` does for each field, in `CallRecord`'s order (a loop over plain
# pairs: the parser runs for every record of the standard path).
_PARSERS = tuple((field.wire, field.parse) for field in CALL_FIELDS)
# The fields of an upstream call record the gateway reads; `slim_body` drops the rest.
WIRE_KEYS = tuple(field.wire for field in CALL_FIELDS)


@dataclass(frozen=True, slots=True)
class CallList:
    """One upstream page: the parsed calls, the records that could not be, the next page."""

    records: list[CallRecord]
    bad: list[BadRecord]
    # The page after this one, per the upstream's `Link rel="next"`, or why that link
    # cannot be followed (the page is served, the walk ends there with a warning).
    next: ListQuery | None = None
    next_refused: str | None = None
    # Records the upstream sent past the `size` asked for, which are not served.
    excess: int = 0


def entries_kept(query: ListQuery) -> int:
    """How many records of a list answer to `query` are kept: the `size` asked for, or,
    without pagination (a bridge or conference filter, where the upstream rightly sends
    every match), the upstream's largest page."""
    return query.size if query.paginated else MAX_PAGE_SIZE


def within_size(body: Any, query: ListQuery) -> tuple[Any, int]:
    """A list body cut to the records `query` keeps (`entries_kept`), and how many were cut.

    An upstream that sends more than it was asked (a bug, or a hostile one) must not make
    the gateway serve or hold more than the caller asked for. Anything but a list is
    passed on unchanged, for the reader to refuse.
    """
    limit = entries_kept(query)
    if not isinstance(body, list) or len(body) <= limit:
        return body, 0
    # A copy: the body may be a cache's.
    return body[:limit], len(body) - limit


def cut_in_place(body: Any, limit: int) -> int:
    """Cut `body` to its first `limit` entries if it is a longer list; how many were cut.

    Done by the upstream client on the freshly parsed body before any per-entry work:
    five million entries then cost what freeing them costs, not five million record
    passes on the event loop.
    """
    if not isinstance(body, list) or len(body) <= limit:
        return 0
    excess = len(body) - limit
    del body[limit:]
    return excess
