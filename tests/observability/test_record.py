from __future__ import annotations

import re

import pytest

from gateway.observability.record import RequestRecord, request_id_from, request_id_of
from gateway.upstream.tally import UpstreamTally


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
        pytest.param(
            [(b"x-request-id", b"abc-1"), (b"x-request-id", b"abc-2")], True, id="first-of-two"
        ),
        pytest.param([(b"x-request-id", b"has space")], False, id="insane-id-replaced"),
        pytest.param([(b"x-request-id", b"x" * 129)], False, id="too-long-replaced"),
        pytest.param([], False, id="none-sent"),
    ],
)
def test_the_request_id_is_the_callers_when_sane(
    headers: list[tuple[bytes, bytes]], kept: bool
) -> None:
    # Every layer reads the one id made with the request's facts (tests/test_request_facts.py).
    assert (request_id_of([(b"accept", b"*/*"), *headers]) == "abc-1") is kept


def test_the_line_counts_what_the_operations_tally_holds_when_it_is_written() -> None:
    record = RequestRecord("r-1", "POST")
    assert (record.log_fields(0)["upstream_requests"], record.log_fields(0)["cache"]) == (0, None)
    tally = UpstreamTally()
    record.upstream = tally

    # Counted after the record was handed the tally (the operation runs after the
    # endpoint makes its context): read when the line is written, at the end.
    tally.cache_result("miss")
    tally.cache_result("miss")
    tally.request_sent()
    record.cache["response-hit"] += 1

    fields = record.log_fields(0)
    assert fields["upstream_requests"] == 1
    assert fields["cache"] == {"response-hit": 1, "miss": 2}
    # The record only reads the tally: writing the line changes nothing in it.
    assert (tally.cache, tally.requests) == ({"miss": 2}, 1)
