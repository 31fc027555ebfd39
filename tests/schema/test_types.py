"""The schema's `Call` type is built from the field table (calls.CALL_FIELDS): the contract.

Everything else reads the table, so a field renamed, dropped or retyped there would move
every table-driven test with it. This module pins the contract by hand instead.
"""

from __future__ import annotations

from graphql import GraphQLEnumType, GraphQLObjectType

from gateway.calls import CALL_FIELDS
from gateway.schema import build_schema, graphql_core_schema
from gateway.schema.types import ENUMS

# The Call fields as clients see them and where each comes from upstream, written out
# on purpose (the schema the README promises, the upstream's list-calls fields), not read
# from the table.
CONTRACT = {
    "id": ("id", "ID!"),
    "direction": ("direction", "CallDirection!"),
    "from": ("from", "String!"),
    "to": ("to", "String!"),
    "state": ("state", "CallState!"),
    "startTime": ("startTime", "DateTime"),
    "activeTime": ("activeTime", "DateTime"),
    "endTime": ("endTime", "DateTime"),
    "callbackUrl": ("callbackUrl", "String"),
    "callbackHttpMethod": ("callbackHttpMethod", "CallbackHttpMethod"),
    "callbackTimeout": ("callbackTimeout", "Int"),
    "fallbackUrl": ("fallbackUrl", "String"),
    "bridgeId": ("bridgeId", "ID"),
    "conferenceId": ("conferenceId", "ID"),
    "chargeableDuration": ("chargeableDuration", "Int"),
    "recordingEnabled": ("recordingEnabled", "Boolean"),
    "recordingFileFormat": ("recordingFileFormat", "RecordingFileFormat"),
    "transcriptionEnabled": ("transcriptionEnabled", "Boolean"),
    "sipHeaders": ("sipHeaders", "[SipHeader!]!"),
    "eventsUrl": ("events", "String"),
}


def test_the_call_type_is_the_contract_in_order() -> None:
    call = graphql_core_schema(build_schema()).type_map["Call"]
    assert isinstance(call, GraphQLObjectType)

    served = {name: str(field.type) for name, field in call.fields.items()}

    assert list(served) == list(CONTRACT)
    assert served == {name: sdl_type for name, (_, sdl_type) in CONTRACT.items()}


def test_the_table_reads_each_field_from_its_upstream_key() -> None:
    assert {field.name: field.wire for field in CALL_FIELDS} == {
        name: wire for name, (wire, _) in CONTRACT.items()
    }


def test_each_choice_is_served_by_an_enum_of_exactly_its_values() -> None:
    schema = graphql_core_schema(build_schema())
    for field in CALL_FIELDS:
        if field.kind != "choice":
            continue
        enum = ENUMS[field.choices]
        served = schema.type_map[enum.__name__]
        assert isinstance(served, GraphQLEnumType)
        # Required choices have UNKNOWN for a value the gateway does not know (yet).
        unknown = {"unknown"} if field.required else set()
        assert {member.value for member in enum} == field.choices | unknown, field.name
        # The compiled path serves a choice as its upper-cased value.
        assert {member.name for member in enum} == {
            value.upper() for value in field.choices | unknown
        }, field.name
