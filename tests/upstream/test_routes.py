"""The REST paths and parameters: the requests built from them, and the templates traces name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.calls import ListQuery
from gateway.upstream import routes


@pytest.mark.parametrize(
    ("query", "target"),
    [
        pytest.param(
            ListQuery(), "/v1/users/u-1/calls/?page=0&size=25&sortOrder=desc", id="defaults"
        ),
        pytest.param(
            ListQuery(from_="+19195551212", to="sip:a@b.example", page=2, size=5),
            "/v1/users/u-1/calls/?from=%2B19195551212&to=sip%3Aa%40b.example"
            "&page=2&size=5&sortOrder=desc",
            id="filters-percent-encoded",
        ),
        pytest.param(
            ListQuery(bridge_id="b-1", page=3, sort_order="asc"),
            "/v1/users/u-1/calls/?bridgeId=b-1&sortOrder=asc",
            id="bridge-without-paging",
        ),
    ],
)
def test_a_list_request_carries_the_querys_parameters(query: ListQuery, target: str) -> None:
    request = routes.list_calls("u-1", query)

    assert request.target == target
    assert request.shape == "array"


def test_a_call_request_names_the_call_and_expects_an_object() -> None:
    request = routes.get_call("u-1", "c-9")

    assert (request.target, request.shape) == ("/v1/users/u-1/calls/c-9", "object")


@pytest.mark.parametrize(
    ("arguments", "params"),
    [
        pytest.param({}, [("page", "0"), ("size", "25"), ("sortOrder", "desc")], id="defaults"),
        pytest.param(
            {"size": 1, "page": 0}, [("page", "0"), ("size", "1"), ("sortOrder", "desc")], id="min"
        ),
        pytest.param(
            {"size": 1000, "page": 10**6, "sort_order": "asc"},
            [("page", "1000000"), ("size", "1000"), ("sortOrder", "asc")],
            id="max-size",
        ),
        pytest.param(
            {"bridge_id": "b", "page": 3, "size": 5},
            [("bridgeId", "b"), ("sortOrder", "desc")],
            id="bridge-unpaginated",
        ),
        pytest.param(
            {"conference_id": "c", "from_": "+12"},
            [("conferenceId", "c"), ("from", "+12"), ("sortOrder", "desc")],
            id="conference-unpaginated",
        ),
    ],
)
def test_list_params_are_in_a_stable_order(arguments: dict[str, Any], params: list[Any]) -> None:
    assert list(routes.list_params(ListQuery.create(**arguments))) == params


def test_the_calls_segments_are_the_calls_path() -> None:
    assert "/" + "/".join(routes.calls_segments("u-1")) + "/" == routes.calls_path("u-1")


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/users/u-1/calls/", routes.CALLS_ROUTE),
        ("/v1/users/u-1/calls", routes.CALLS_ROUTE),
        (routes.call_path("u-1", "c-9"), routes.CALL_ROUTE),
        ("/v1/users/u-1/calls/c-9/events", routes.OTHER_ROUTE),
        ("/v1/users/u-1", routes.OTHER_ROUTE),
    ],
    ids=["list", "list-no-slash", "one", "events", "user"],
)
def test_templates_hold_no_ids(path: str, template: str) -> None:
    assert routes.template(path) == template


def test_no_other_module_spells_the_rest_paths() -> None:
    # The sandbox is the fake upstream: it serves these paths and keeps its own copy.
    package = Path(routes.__file__).resolve().parent.parent
    spelled = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if "/v1/users" in path.read_text()
        and path != Path(routes.__file__).resolve()
        and "sandbox" not in path.parts
    ]

    assert spelled == []


def test_every_parameter_a_list_request_sends_is_a_known_list_parameter() -> None:
    everything = ListQuery(bridge_id="b", conference_id="c", from_="+1", to="+2")
    paged = ListQuery(from_="+1", to="+2")

    sent = {name for query in (everything, paged) for name, _ in routes.list_params(query)}

    assert sent == routes.LIST_PARAMS
