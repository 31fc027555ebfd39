"""The GraphQL types of the call history. Descriptions are written for GraphiQL's docs pane."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from operator import attrgetter
from typing import Annotated, Any, NewType, TypeVar

import strawberry
from strawberry.types import Info

from gateway.calls import (
    CALL_FIELDS,
    DIRECTIONS,
    FILE_FORMATS,
    HTTP_METHODS,
    STATES,
    BadRecord,
    CallField,
    CallRecord,
    Odd,
    TooMany,
)
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
_T = TypeVar("_T")

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
    if isinstance(value, TooMany):
        return [SipHeader(name=name, value=header) for name, header in value.kept], value
    if isinstance(value, Odd):
        return [], value
    return [SipHeader(name=name, value=header) for name, header in value], None


# The enum that serves each set of upstream choices (`CallField.choices`): its values are
# the choices, plus `unknown` where the field is required.
ENUMS: dict[frozenset[str], type[Enum]] = {
    DIRECTIONS: CallDirection,
    STATES: CallState,
    HTTP_METHODS: CallbackHttpMethod,
    FILE_FORMATS: RecordingFileFormat,
}


def _reader(field: CallField) -> Callable[[CallRecord], Read]:
    get = attrgetter(field.attribute)
    if field.kind == "choice":
        enum = ENUMS[field.choices]
        fallback = enum["UNKNOWN"] if field.required else None
        return lambda record: _enum(get(record), enum, fallback)
    if field.kind == "id":
        return lambda record: _id_value(get(record))
    if field.kind == "instant":
        return lambda record: _instant_value(get(record))
    if field.kind == "headers":
        return lambda record: _sip_value(get(record))
    return lambda record: _plain(get(record))


READERS: dict[str, Callable[[CallRecord], Read]] = {
    field.name: _reader(field) for field in CALL_FIELDS
}


_ENUM_FIELDS = frozenset(field.name for field in CALL_FIELDS if field.kind == "choice")


def odd_field_warning(
    record: CallRecord, field: str, odd: Odd, served: Any, path: tuple[str | int, ...]
) -> UpstreamWarning:
    """The warning for a field whose upstream value was off, and what was served instead."""
    shown = served.name if isinstance(served, Enum) else "an empty list" if served == [] else "null"
    kind: WarningKind = "unknown_value" if field in _ENUM_FIELDS else "malformed_field"
    if isinstance(odd, TooMany):
        return UpstreamWarning(
            f"The upstream sent call {record.id} with more than {len(odd.kept)} `{field}`; "
            f"only the first {len(odd.kept)} are served.",
            path,
            record.id,
            kind,
        )
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


# The GraphQL type of each kind of field that is not a choice (`ENUMS`) or the headers.
_SCALARS: dict[str, Any] = {
    "id": strawberry.ID,
    "text": str,
    "instant": DateTime,
    "integer": int,
    "boolean": bool,
}


def _graphql_type(field: CallField) -> Any:
    """The Python annotation strawberry reads the field's GraphQL type from."""
    if field.kind == "headers":
        return list[SipHeader]  # never null: no headers is an empty list
    base = ENUMS[field.choices] if field.kind == "choice" else _SCALARS[field.kind]
    return base if field.required else base | None


def _resolver(field: CallField) -> Callable[..., Any]:
    name, get = field.name, attrgetter(field.attribute)
    if field.required and field.kind in ("id", "text"):
        # Checked by the parser (a record without it is no call): never odd, no warning.
        def resolve_plain(self: Call) -> Any:
            return get(self.record)

        resolve: Callable[..., Any] = resolve_plain
        annotations: dict[str, Any] = {}
    else:

        def resolve_read(self: Call, info: Info[Context, None]) -> Any:
            return read_field(self, info, name)

        resolve = resolve_read
        annotations = {"info": Info[Context, None]}
    # Strawberry reads the field's type from the resolver's return annotation.
    resolve.__annotations__ = {**annotations, "return": _graphql_type(field)}
    resolve.__name__ = resolve.__qualname__ = field.attribute
    return resolve


def _with_call_fields(cls: type[_T]) -> type[_T]:
    """Add a resolver field for each entry of `CALL_FIELDS`, in the table's order."""
    for field in CALL_FIELDS:
        resolver = _resolver(field)
        setattr(
            cls,
            field.attribute,
            strawberry.field(resolver=resolver, name=field.name, description=field.description),
        )
    return cls


@strawberry.federation.type(
    keys=["id"],
    description=(
        "A call you made or received. Fields the upstream did not send are null. A field "
        "whose upstream value is malformed is null (an empty list for `sipHeaders`, UNKNOWN "
        "for `direction` and `state`), with a warning at its path in the response's "
        "`extensions.warnings`, never an error."
    ),
)
@_with_call_fields  # the fields come from calls.CALL_FIELDS, one resolver each
class Call:
    record: strawberry.Private[CallRecord]

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


# The arguments `calls`, `callsConnection` and `callsUpdated` share, declared once.
FilterArgument = Annotated[
    CallFilter | None, strawberry.argument(description="Only calls that match.")
]
SortArgument = Annotated[SortOrder, strawberry.argument(description="Order by `startTime`.")]
