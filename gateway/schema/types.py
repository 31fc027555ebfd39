"""The GraphQL types of the call history. Descriptions are written for GraphiQL's docs pane."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from typing import Any, NewType

import strawberry
from strawberry.types import Info

from gateway.calls import BadRecord, CallRecord, Odd
from gateway.context import Context, UpstreamWarning, WarningKind
from gateway.errors import BadUserInput


def serialize_datetime(value: datetime) -> str:
    """The DateTime scalar's output form."""
    # RFC 3339 with milliseconds in UTC (`Z`): the upstream's own most common form. The
    # upstream's other offsets are converted, so every instant reads and sorts alike.
    moment = value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    text = moment.isoformat(timespec="milliseconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO 8601 string")
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


DateTime = NewType("DateTime", datetime)

DATETIME_SCALAR = strawberry.scalar(
    name="DateTime",
    description=(
        "An instant as an RFC 3339 / ISO 8601 string with milliseconds and a UTC offset, "
        "e.g. `2013-02-08T13:15:47.587Z`. The upstream's other forms (hour-only offsets, "
        "epoch milliseconds) are normalised to this one."
    ),
    serialize=serialize_datetime,
    parse_value=_parse_datetime,
)


@strawberry.enum(description="How a list of calls is ordered by `startTime`.")
class SortOrder(Enum):
    ASC = strawberry.enum_value("asc", description="Oldest call first.")
    DESC = strawberry.enum_value("desc", description="Newest call first (the default).")


@strawberry.enum(description="Whether the call was received or made.")
class CallDirection(Enum):
    IN = strawberry.enum_value("in", description="An incoming call: someone called you.")
    OUT = strawberry.enum_value("out", description="An outgoing call: you called someone.")
    UNKNOWN = strawberry.enum_value(
        "unknown",
        description=(
            "A direction this gateway does not know (yet); the response's "
            "`extensions.warnings` says what the upstream sent."
        ),
    )


@strawberry.enum(description="Where the call is in its life.")
class CallState(Enum):
    STARTED = strawberry.enum_value("started", description="Created, not yet answered.")
    REJECTED = strawberry.enum_value(
        "rejected",
        description=(
            "Rejected or not answered. An outgoing call that reached voicemail is not rejected."
        ),
    )
    ACTIVE = strawberry.enum_value("active", description="Answered and in progress.")
    COMPLETED = strawberry.enum_value("completed", description="Ended after being answered.")
    TRANSFERRING = strawberry.enum_value("transferring", description="Being transferred.")
    ERROR = strawberry.enum_value(
        "error",
        description="Failed on the platform's side (a state Bandwidth's own SDKs list).",
    )
    UNKNOWN = strawberry.enum_value(
        "unknown",
        description=(
            "A state this gateway does not know (yet), so that a new upstream value never "
            "breaks a client; the response's `extensions.warnings` says what was sent."
        ),
    )


@strawberry.enum(description="The HTTP method used to deliver call events to `callbackUrl`.")
class CallbackHttpMethod(Enum):
    GET = strawberry.enum_value("GET", description="Events are sent as GET requests.")
    POST = strawberry.enum_value("POST", description="Events are sent as POST requests.")


@strawberry.enum(description="The audio file format of a call's recordings.")
class RecordingFileFormat(Enum):
    WAV = strawberry.enum_value("wav", description="WAV audio (the default).")
    MP3 = strawberry.enum_value("mp3", description="MP3 audio.")


@strawberry.type(description="A custom SIP header sent with the call (names start with `X-`).")
class SipHeader:
    name: str = strawberry.field(description="The header name, e.g. `X-Customer-Id`.")
    value: str = strawberry.field(description="The header value (at most 256 characters).")


@strawberry.input(
    description=(
        "Narrows a list of calls. All given fields must match. With `bridgeId` or "
        "`conferenceId`, every matching call is returned at once and paging does not apply."
    )
)
class CallFilter:
    bridge_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only calls in this bridge."
    )
    conference_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only calls in this conference."
    )
    from_: str | None = strawberry.field(
        default=None,
        name="from",
        description=(
            "Only calls made from this number: E.164 (`+19195551212`) or a SIP URI "
            "(`sip:someone@example.com`)."
        ),
    )
    to: str | None = strawberry.field(
        default=None,
        description=(
            "Only calls made to this number: E.164 (`+19195551212`) or a SIP URI "
            "(`sip:someone@example.com`)."
        ),
    )


# -- reading a record's fields: one meaning for the standard and the compiled path ----------
#
# Each reader returns the field's value as the schema serves it and, when the upstream's
# value was off, that value (`Odd`): the field is then served as UNKNOWN, null or an empty
# list, and the caller reports a warning. fastpath.py serves odd records with these too.


Read = tuple[Any, Odd | None]


def _plain(value: Any) -> Read:
    return (None, value) if isinstance(value, Odd) else (value, None)


def _enum(value: Any, enum: type[Enum], fallback: Enum | None) -> Read:
    if isinstance(value, Odd):
        return fallback, value
    return (None if value is None else enum(value)), None


def _instant_value(value: datetime | Odd | None) -> Read:
    if isinstance(value, Odd):
        return None, value
    return (None if value is None else DateTime(value)), None


def _id_value(value: str | Odd | None) -> Read:
    if isinstance(value, Odd):
        return None, value
    return (None if value is None else strawberry.ID(value)), None


def _sip_value(value: tuple[tuple[str, str], ...] | Odd) -> Read:
    if isinstance(value, Odd):
        return [], value
    return [SipHeader(name=name, value=header) for name, header in value], None


READERS: dict[str, Callable[[CallRecord], Read]] = {
    "id": lambda r: (strawberry.ID(r.id), None),
    "direction": lambda r: _enum(r.direction, CallDirection, CallDirection.UNKNOWN),
    "from": lambda r: (r.from_, None),
    "to": lambda r: (r.to, None),
    "state": lambda r: _enum(r.state, CallState, CallState.UNKNOWN),
    "startTime": lambda r: _instant_value(r.start_time),
    "activeTime": lambda r: _instant_value(r.active_time),
    "endTime": lambda r: _instant_value(r.end_time),
    "callbackUrl": lambda r: _plain(r.callback_url),
    "callbackHttpMethod": lambda r: _enum(r.callback_http_method, CallbackHttpMethod, None),
    "callbackTimeout": lambda r: _plain(r.callback_timeout),
    "fallbackUrl": lambda r: _plain(r.fallback_url),
    "bridgeId": lambda r: _id_value(r.bridge_id),
    "conferenceId": lambda r: _id_value(r.conference_id),
    "chargeableDuration": lambda r: _plain(r.chargeable_duration),
    "recordingEnabled": lambda r: _plain(r.recording_enabled),
    "recordingFileFormat": lambda r: _enum(r.recording_file_format, RecordingFileFormat, None),
    "transcriptionEnabled": lambda r: _plain(r.transcription_enabled),
    "sipHeaders": lambda r: _sip_value(r.sip_headers),
    "eventsUrl": lambda r: _plain(r.events_url),
}


_ENUM_FIELDS = frozenset({"direction", "state", "callbackHttpMethod", "recordingFileFormat"})


def odd_field_warning(
    record: CallRecord, field: str, odd: Odd, served: Any, path: tuple[str | int, ...]
) -> UpstreamWarning:
    """The warning for a field whose upstream value was off, and what was served instead."""
    shown = served.name if isinstance(served, Enum) else "an empty list" if served == [] else "null"
    kind: WarningKind = "unknown_value" if field in _ENUM_FIELDS else "malformed_field"
    return UpstreamWarning(
        f"The upstream sent call {record.id} with an unexpected `{field}` "
        f"({odd.describe()}); it is served as {shown}.",
        path,
        record.id,
        kind,
    )


def read_field(call: Call, info: Info[Context, None], field: str) -> Any:
    """A field's value; an odd upstream value is reported as a warning at the field's path."""
    value, odd = READERS[field](call.record)
    if odd is not None:
        info.context.warnings.append(
            odd_field_warning(call.record, field, odd, value, tuple(info.path.as_list()))
        )
    return value


@strawberry.federation.type(
    keys=["id"],
    description=(
        "A call you made or received. Fields the upstream did not send are null. A field "
        "whose upstream value is malformed is null (an empty list for `sipHeaders`, UNKNOWN "
        "for `direction` and `state`), with a warning at its path in the response's "
        "`extensions.warnings`, never an error."
    ),
)
class Call:
    record: strawberry.Private[CallRecord]

    @strawberry.field(description="The unique id of the call, e.g. `c-abc123`.")
    def id(self) -> strawberry.ID:
        return strawberry.ID(self.record.id)

    @strawberry.field(description="Whether the call was incoming or outgoing.")
    def direction(self, info: Info[Context, None]) -> CallDirection:
        return read_field(self, info, "direction")  # type: ignore[no-any-return]

    @strawberry.field(
        name="from",
        description="Who made the call: an E.164 number (`+15555555555`) or a SIP address.",
    )
    def from_(self) -> str:
        return self.record.from_

    @strawberry.field(
        description="Who received the call: an E.164 number (`+15555555555`) or a SIP address."
    )
    def to(self) -> str:
        return self.record.to

    @strawberry.field(description="Where the call is in its life.")
    def state(self, info: Info[Context, None]) -> CallState:
        return read_field(self, info, "state")  # type: ignore[no-any-return]

    @strawberry.field(description="When the call was created.")
    def start_time(self, info: Info[Context, None]) -> DateTime | None:
        return read_field(self, info, "startTime")  # type: ignore[no-any-return]

    @strawberry.field(description="When the call was answered; null if it never was.")
    def active_time(self, info: Info[Context, None]) -> DateTime | None:
        return read_field(self, info, "activeTime")  # type: ignore[no-any-return]

    @strawberry.field(description="When the call ended; null while it is still going.")
    def end_time(self, info: Info[Context, None]) -> DateTime | None:
        return read_field(self, info, "endTime")  # type: ignore[no-any-return]

    @strawberry.field(description="The URL that receives this call's events.")
    def callback_url(self, info: Info[Context, None]) -> str | None:
        return read_field(self, info, "callbackUrl")  # type: ignore[no-any-return]

    @strawberry.field(
        description=(
            "How events are sent to `callbackUrl` (POST by default); the upstream's "
            "`get`/`post` in any case read as GET/POST."
        )
    )
    def callback_http_method(self, info: Info[Context, None]) -> CallbackHttpMethod | None:
        return read_field(self, info, "callbackHttpMethod")  # type: ignore[no-any-return]

    @strawberry.field(
        description="How long, in milliseconds, the platform waits for `callbackUrl` to answer."
    )
    def callback_timeout(self, info: Info[Context, None]) -> int | None:
        return read_field(self, info, "callbackTimeout")  # type: ignore[no-any-return]

    @strawberry.field(description="The URL that receives events when `callbackUrl` fails.")
    def fallback_url(self, info: Info[Context, None]) -> str | None:
        return read_field(self, info, "fallbackUrl")  # type: ignore[no-any-return]

    @strawberry.field(description="The bridge the call is in, if any.")
    def bridge_id(self, info: Info[Context, None]) -> strawberry.ID | None:
        return read_field(self, info, "bridgeId")  # type: ignore[no-any-return]

    @strawberry.field(description="The conference the call is in, if any.")
    def conference_id(self, info: Info[Context, None]) -> strawberry.ID | None:
        return read_field(self, info, "conferenceId")  # type: ignore[no-any-return]

    @strawberry.field(description="The number of seconds the call is billed for.")
    def chargeable_duration(self, info: Info[Context, None]) -> int | None:
        return read_field(self, info, "chargeableDuration")  # type: ignore[no-any-return]

    @strawberry.field(description="Whether the call was recorded.")
    def recording_enabled(self, info: Info[Context, None]) -> bool | None:
        return read_field(self, info, "recordingEnabled")  # type: ignore[no-any-return]

    @strawberry.field(description="The file format of the call's recordings.")
    def recording_file_format(self, info: Info[Context, None]) -> RecordingFileFormat | None:
        return read_field(self, info, "recordingFileFormat")  # type: ignore[no-any-return]

    @strawberry.field(description="Whether the call's recordings were transcribed automatically.")
    def transcription_enabled(self, info: Info[Context, None]) -> bool | None:
        return read_field(self, info, "transcriptionEnabled")  # type: ignore[no-any-return]

    @strawberry.field(
        description="Custom SIP headers sent with the call (up to 5); empty when there were none."
    )
    def sip_headers(self, info: Info[Context, None]) -> list[SipHeader]:
        return read_field(self, info, "sipHeaders")  # type: ignore[no-any-return]

    @strawberry.field(description="The upstream URL of this call's events.")
    def events_url(self, info: Info[Context, None]) -> str | None:
        return read_field(self, info, "eventsUrl")  # type: ignore[no-any-return]

    @classmethod
    async def resolve_reference(
        cls, /, info: Info[Context, None], **representation: Any
    ) -> Call | None:
        """Federation: another subgraph's `Call` reference, fetched by id (null if unknown).

        Strawberry passes the representation's keys as keyword arguments. A router may
        send more than the key (fields of `@requires` or `@provides`), so every other key
        is ignored, as Apollo subgraphs do (`cls` is positional-only, so even a key named
        `cls` is just another key); the key itself must be a string id.
        """
        call_id = representation.get("id")
        if not isinstance(call_id, str):
            raise BadUserInput("Each `Call` representation needs its key `id` as a string.")
        return await fetch_call(info.context, call_id, tuple(info.path.as_list()))


async def fetch_call(context: Context, call_id: str, path: tuple[str | int, ...]) -> Call | None:
    """One call by id, or None; a record that cannot be a call is None with a warning."""
    found = await context.calls.get_call(call_id)
    if found is None:
        return None
    if isinstance(found, BadRecord):
        context.warnings.append(
            UpstreamWarning(
                f"The upstream sent {found.reason}; it is served as null.",
                path,
                found.call_id or call_id,
                "left_out",
            )
        )
        return None
    return Call(record=found)
