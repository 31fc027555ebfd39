"""The compiled path answers exactly what the standard executor answers, byte for byte.

Two gateways in front of one recording fake upstream, one with the compiled path and one
without; hypothesis generates valid queries over the schema (aliases, fragments,
`@include`/`@skip`, variables, `__typename`, several roots) and upstream pages with odd
records, and both answers must be the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.calls import CALL_FIELDS, CallField
from tests.conftest import DEMO, PathPair, examples, path_pair

CALLS_PATH = f"/v1/users/{DEMO.user_id}/calls/"
# Every field of the table the compiled path builds, so a field added there is fuzzed too
# (tests/schema/test_types.py pins the table itself).
SCALAR_FIELDS = (
    *(field.name for field in CALL_FIELDS if field.kind != "headers"),
    "__typename",
)


@pytest.fixture(scope="module")
def pair() -> Iterator[PathPair]:
    with path_pair() as both_paths:
        yield both_paths


# --- upstream records: mostly well-formed, sometimes odd in every way docs/upstream.md warns of

timestamps = st.one_of(
    st.just("2013-02-08T13:15:47.587Z"),
    st.just("2013-02-30T13:15:47.587Z"),
    st.just("2014-12-19T19:13:20.000Z"),
    st.just("2014-12-19T19:13:20Z"),
    st.just("2013-07-12T15:54:47-02"),
    st.just("2013-07-12T15:54:47.5+05:30"),
    st.just("2013-02-08t13:15:47.587z"),
    st.just("2016-12-31T23:59:60Z"),
    st.just("2013-02-08 13:15:47,5-0200"),
    st.integers(min_value=0, max_value=2_000_000_000_000),
    st.just("yesterday"),
    st.booleans(),
)
odd = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=5), st.just([1])
)
sip_headers = st.one_of(
    st.dictionaries(
        st.sampled_from(["X-A", "X-B", "X-C"]),
        st.one_of(st.text(max_size=8), st.integers(-(2**40), 2**40), st.booleans()),
        max_size=3,
    ),
    st.just({"X-Bad": None}),
    st.just(["not", "a", "map"]),
)


def upstream_values(field: CallField) -> st.SearchStrategy[Any]:
    """Values of an optional field, by its kind: documented, legal variants, and odd."""
    if field.kind == "choice":
        spellings = sorted({v for c in field.choices for v in (c, c.upper(), c.title())})
        return st.one_of(st.sampled_from([*spellings, "PUT", "ogg"]), odd)
    return {
        "id": st.one_of(st.just("brg-1"), odd),
        "text": st.one_of(st.just(""), st.just("https://example.com/cb"), odd),
        "instant": timestamps,
        "integer": st.one_of(st.integers(-(2**33), 2**33), st.just("15"), st.just(2.0),
                             st.just(2.5), odd),
        "boolean": st.one_of(st.booleans(), st.just("true"), st.just("FALSE"), odd),
        "headers": sip_headers,
    }[field.kind]  # fmt: skip


optional_values = {
    field.wire: upstream_values(field) for field in CALL_FIELDS if not field.required
}


@st.composite
def records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 30)) == 0:
        return draw(st.sampled_from([None, 7, "call", []]))
    record: dict[str, Any] = {
        "id": draw(st.sampled_from(["c-1", "c-2", "c-3", ""])),
        "direction": draw(st.sampled_from(["in", "out", "OUT", "sideways", None, 3])),
        "from": draw(st.sampled_from(["+19195551212", "sip:a@b.example", ""])),
        "to": "+19195550000",
        "state": draw(
            st.sampled_from(["completed", "active", "Started", "error", "ERROR", "queued", None])
        ),
    }
    for key in draw(st.lists(st.sampled_from(sorted(record)), max_size=2, unique=True)):
        if draw(st.booleans()):
            del record[key]
    for key, values in optional_values.items():
        if draw(st.booleans()):
            record[key] = draw(values)
    return record


# --- queries: valid documents over `calls`, with every shape the compiled path plans ------


@st.composite
def selections(draw: st.DrawFn, depth: int = 0) -> str:
    fields = draw(st.lists(st.sampled_from(SCALAR_FIELDS), min_size=1, max_size=8))
    parts = []
    for index, name in enumerate(fields):
        alias = f"a{index}_{depth}: " if draw(st.integers(0, 4)) == 0 else ""
        directive = draw(st.sampled_from(["", "", "", " @include(if: $yes)", " @skip(if: $no)",
                                          " @skip(if: true)", " @include(if: false)"]))  # fmt: skip
        parts.append(f"{alias}{name}{directive}")
    if draw(st.booleans()):
        sub = " ".join(draw(st.lists(st.sampled_from(["name", "value", "__typename"]), min_size=1)))
        parts.append(f"sipHeaders {{ {sub} }}")
    if depth < 1 and draw(st.integers(0, 3)) == 0:
        parts.append(f"... on Call {{ {draw(selections(depth + 1))} }}")
    if depth < 1 and draw(st.integers(0, 3)) == 0:
        parts.append("...Extra")
    return " ".join(parts)


@st.composite
def operations(draw: st.DrawFn) -> dict[str, Any]:
    roots = []
    for index in range(draw(st.integers(1, 3))):
        size = draw(st.sampled_from(["", "size: 3", "size: $size", "size: 0"]))
        order = draw(st.sampled_from(["", "sortOrder: ASC", "sortOrder: $order"]))
        arguments = ", ".join(a for a in (size, order) if a)
        arguments = f"({arguments})" if arguments else ""
        directive = " @include(if: $yes)" if draw(st.integers(0, 5)) == 0 else ""
        roots.append(f"r{index}: calls{arguments}{directive} {{ {draw(selections())} }}")
    if draw(st.booleans()):
        roots.append("__typename")
    body = " ".join(roots)
    # Only what the body uses may be declared: unused variables or fragments would make
    # the document invalid, and both paths would agree on a validation error.
    declared = {
        "$yes": "$yes: Boolean = true",
        "$no": "$no: Boolean!",
        "$size": "$size: Int = 2",
        "$order": "$order: SortOrder",
    }
    used = [declaration for name, declaration in declared.items() if name in body]
    signature = f"({', '.join(used)})" if used else ""
    query = f"query Q{signature} {{ {body} }}"
    if "...Extra" in body:
        query += " fragment Extra on Call { id endTime sipHeaders { value } }"
    variables: dict[str, Any] = {}
    if "$no" in body:
        variables["no"] = draw(st.booleans())
    if "$yes" in body and draw(st.booleans()):
        variables["yes"] = draw(st.booleans())
    if "$order" in body and draw(st.booleans()):
        variables["order"] = draw(st.sampled_from(["ASC", "DESC", "SIDEWAYS"]))
    return {"query": query, "variables": variables}


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(operation=operations(), page=st.lists(records(), max_size=6))
def test_compiled_and_standard_answers_are_identical(
    pair: PathPair, operation: dict[str, Any], page: list[Any]
) -> None:
    pair.upstream.answer(CALLS_PATH, page)

    fast, standard = pair.both(operation)

    assert fast.status_code == standard.status_code
    assert fast.content == standard.content
    # The generator makes valid documents only; a validation error means it is broken.
    assert b"GRAPHQL_VALIDATION_FAILED" not in fast.content, fast.content
    # Odd records are tolerated: warnings beside the data, never an entry in `errors`
    # (the only errors are the generator's own out-of-range `size: 0`).
    body = fast.json()
    assert {e["extensions"]["code"] for e in body.get("errors", [])} <= {"BAD_USER_INPUT"}
    for warning in body.get("extensions", {}).get("warnings", []):
        assert warning["code"] == "UPSTREAM_BAD_RESPONSE"


@pytest.mark.parametrize(
    "page",
    [
        pytest.param([{"id": "c-1", "direction": "in", "from": "+1", "to": "+2",
                       "state": "completed", "startTime": "2013-02-08T13:15:47.587Z"}], id="clean"),
        pytest.param([{"direction": "in", "from": "+1", "to": "+2",
                       "state": "error"}], id="left-out-record"),
        pytest.param([{"id": "c-1", "direction": "in", "from": "+1", "to": "+2",
                       "state": "queued"}], id="unknown-state"),
        pytest.param({"not": "a list"}, id="not-a-list"),
    ],
)  # fmt: skip
def test_the_compiled_path_costs_no_extra_upstream_request(pair: PathPair, page: Any) -> None:
    pair.upstream.answer(CALLS_PATH, page)
    before = len(pair.upstream.requests)

    response = pair.fast.post(
        "/graphql", json={"query": "{ a: calls { id state } b: calls { id } }"}
    )

    assert response.status_code == 200
    assert len(pair.upstream.requests) - before == 1


def test_variables_are_coerced_for_each_request_of_a_document(pair: PathPair) -> None:
    # The compiled path keeps coerced variables per document; each request must still
    # get its own values, and values that do not coerce must never be kept.
    pair.upstream.answer(CALLS_PATH, [])
    query = (
        "query Q($size: Int = 2, $order: SortOrder) "
        "{ calls(size: $size, sortOrder: $order) { id } }"
    )
    sent = []
    for variables in (
        {"size": 3},
        {"size": 5, "order": "ASC"},
        {"size": 3},
        {"order": "SIDEWAYS"},
        {"order": "SIDEWAYS"},
        {},
    ):
        before = len(pair.upstream.requests)
        fast, standard = pair.both({"query": query, "variables": variables})
        assert fast.content == standard.content
        fast_request = pair.upstream.requests[before:][:1]
        sent.append(fast_request[0].query if fast_request else None)

    assert sent == [
        "page=0&size=3&sortOrder=desc",
        "page=0&size=5&sortOrder=asc",
        "page=0&size=3&sortOrder=desc",
        None,
        None,
        "page=0&size=2&sortOrder=desc",
    ]
