"""The per-operation tally: look-ups by result and HTTP attempts, each tally its own."""

from __future__ import annotations

from gateway.upstream.tally import UpstreamTally


def test_a_new_tally_counts_nothing() -> None:
    tally = UpstreamTally()

    assert (tally.cache, tally.requests) == ({}, 0)


def test_look_ups_are_counted_by_result_and_attempts_one_each() -> None:
    tally = UpstreamTally()

    for result in ("miss", "hit", "miss", "error"):
        tally.cache_result(result)
    tally.request_sent()
    tally.request_sent()

    assert tally.cache == {"miss": 2, "hit": 1, "error": 1}
    assert tally.requests == 2


def test_each_operations_tally_is_its_own() -> None:
    # A fresh dict per tally: one operation's counts never show in another's line.
    first, second = UpstreamTally(), UpstreamTally()

    first.cache_result("hit")
    first.request_sent()

    assert (second.cache, second.requests) == ({}, 0)
    assert repr(first) == "UpstreamTally(cache={'hit': 1}, requests=1)"
