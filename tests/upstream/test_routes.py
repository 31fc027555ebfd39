"""The REST paths: the requests built from them, and the templates traces name."""

from __future__ import annotations

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
