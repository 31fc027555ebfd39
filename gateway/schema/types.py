"""The GraphQL types of the call history. Descriptions are written for GraphiQL's docs pane."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Any, NewType, TypeVar

import strawberry
from strawberry.types import Info

from gateway.calls import BadRecord, CallRecord, Odd
from gateway.context import Context
from gateway.errors import UpstreamBadResponse


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


T = TypeVar("T")


def _checked(call: Call, value: T | Odd, field: str) -> T:
    if isinstance(value, Odd):
        raise UpstreamBadResponse(
            f"The upstream sent call {call.record.id} with an unexpected `{field}`: "
            f"{value.describe()}.",
            callId=call.record.id,
            field=field,
        )
    return value


def _instant(call: Call, value: datetime | Odd | None, field: str) -> DateTime | None:
    checked = _checked(call, value, field)
    return None if checked is None else DateTime(checked)


@strawberry.federation.type(
    keys=["id"],
    description=(
        "A call you made or received. Fields the upstream did not send are null; a field "
        "whose upstream value is malformed is null with an `UPSTREAM_BAD_RESPONSE` error "
        "at its path."
    ),
)
class Call:
    record: strawberry.Private[CallRecord]

    @strawberry.field(description="The unique id of the call, e.g. `c-abc123`.")
    def id(self) -> strawberry.ID:
        return strawberry.ID(self.record.id)

    @strawberry.field(description="Whether the call was incoming or outgoing.")
    def direction(self) -> CallDirection:
        return CallDirection(self.record.direction)

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
    def state(self) -> CallState:
        return CallState(self.record.state)

    @strawberry.field(description="When the call was created.")
    def start_time(self) -> DateTime | None:
        return _instant(self, self.record.start_time, "startTime")

    @strawberry.field(description="When the call was answered; null if it never was.")
    def active_time(self) -> DateTime | None:
        return _instant(self, self.record.active_time, "activeTime")

    @strawberry.field(description="When the call ended; null while it is still going.")
    def end_time(self) -> DateTime | None:
        return _instant(self, self.record.end_time, "endTime")

    @strawberry.field(description="The URL that receives this call's events.")
    def callback_url(self) -> str | None:
        return _checked(self, self.record.callback_url, "callbackUrl")

    @strawberry.field(description="How events are sent to `callbackUrl` (POST by default).")
    def callback_http_method(self) -> CallbackHttpMethod | None:
        value = _checked(self, self.record.callback_http_method, "callbackHttpMethod")
        return None if value is None else CallbackHttpMethod(value)

    @strawberry.field(
        description="How long, in milliseconds, the platform waits for `callbackUrl` to answer."
    )
    def callback_timeout(self) -> int | None:
        return _checked(self, self.record.callback_timeout, "callbackTimeout")

    @strawberry.field(description="The URL that receives events when `callbackUrl` fails.")
    def fallback_url(self) -> str | None:
        return _checked(self, self.record.fallback_url, "fallbackUrl")

    @strawberry.field(description="The bridge the call is in, if any.")
    def bridge_id(self) -> strawberry.ID | None:
        value = _checked(self, self.record.bridge_id, "bridgeId")
        return None if value is None else strawberry.ID(value)

    @strawberry.field(description="The conference the call is in, if any.")
    def conference_id(self) -> strawberry.ID | None:
        value = _checked(self, self.record.conference_id, "conferenceId")
        return None if value is None else strawberry.ID(value)

    @strawberry.field(description="The number of seconds the call is billed for.")
    def chargeable_duration(self) -> int | None:
        return _checked(self, self.record.chargeable_duration, "chargeableDuration")

    @strawberry.field(description="Whether the call was recorded.")
    def recording_enabled(self) -> bool | None:
        return _checked(self, self.record.recording_enabled, "recordingEnabled")

    @strawberry.field(description="The file format of the call's recordings.")
    def recording_file_format(self) -> RecordingFileFormat | None:
        value = _checked(self, self.record.recording_file_format, "recordingFileFormat")
        return None if value is None else RecordingFileFormat(value)

    @strawberry.field(description="Whether the call's recordings were transcribed automatically.")
    def transcription_enabled(self) -> bool | None:
        return _checked(self, self.record.transcription_enabled, "transcriptionEnabled")

    @strawberry.field(
        description="Custom SIP headers sent with the call (up to 5); empty when there were none."
    )
    def sip_headers(self) -> list[SipHeader]:
        return [SipHeader(name=name, value=value) for name, value in self.record.sip_headers]

    @strawberry.field(description="The upstream URL of this call's events.")
    def events_url(self) -> str | None:
        return _checked(self, self.record.events_url, "eventsUrl")

    @classmethod
    async def resolve_reference(cls, info: Info[Context, None], id: strawberry.ID) -> Call | None:
        """Federation: another subgraph's `Call` reference, fetched by id (null if unknown)."""
        return await fetch_call(info.context, str(id))


async def fetch_call(context: Context, call_id: str) -> Call | None:
    """One call by id, or None; a record the gateway cannot read is an error."""
    found = await context.calls.get_call(call_id)
    if found is None:
        return None
    if isinstance(found, BadRecord):
        raise UpstreamBadResponse(f"The upstream sent {found.reason}.", callId=found.call_id)
    return Call(record=found)
