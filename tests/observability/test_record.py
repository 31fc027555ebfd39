from __future__ import annotations

import re
from typing import Any

import pytest

from gateway.observability.record import (
    RequestRecord,
    bind_request,
    current_request,
    request_id_from,
    scope_request_id,
    unbind_request,
)


def test_new_request_ids_are_unique_and_well_formed() -> None:
    ids = {request_id_from("") for _ in range(1000)}

    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)
    assert request_id_from("caller-chosen.id:1") == "caller-chosen.id:1"
    assert request_id_from("no spaces allowed") != "no spaces allowed"


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        pytest.param([(b"x-request-id", b"abc-1")], True, id="sane-id-kept"),
        pytest.param([(b"X-Request-Id", b"abc-1")], True, id="any-case-name"),
        pytest.param([(b"x-request-id", b"has space")], False, id="insane-id-replaced"),
        pytest.param([(b"x-request-id", b"x" * 129)], False, id="too-long-replaced"),
        pytest.param([], False, id="none-sent"),
    ],
)
def test_a_scope_has_one_request_id_whoever_asks(
    headers: list[tuple[bytes, bytes]], kept: bool
) -> None:
    scope: dict[str, Any] = {"type": "http", "headers": headers}

    first = scope_request_id(scope)

    assert scope_request_id(scope) == first
    assert scope_request_id(dict(scope)) == first  # a layer's copy of the scope too
    assert (first == "abc-1") is kept


def test_the_bound_record_is_the_current_one_until_unbound() -> None:
    record = RequestRecord("r-1", "POST")
    assert current_request() is None

    token = bind_request(record)
    try:
        assert current_request() is record
    finally:
        unbind_request(token)

    assert current_request() is None
