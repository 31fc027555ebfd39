"""The keyed hashes the upstream layer files by: one per kind, none holding a credential."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson

from gateway.upstream.keys import KeyedHashes
from tests.conftest import DEMO


def basic(token: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{token}:{secret}".encode()).decode()


def test_keys_are_hmacs_that_depend_on_every_part_and_not_on_parameter_order() -> None:
    keys = KeyedHashes(b"k")
    auth = basic(DEMO.token, DEMO.secret)
    key = keys.request(auth, "u-demo", "/p", [("a", "1"), ("b", "2")])

    assert key == keys.request(auth, "u-demo", "/p", [("b", "2"), ("a", "1")])
    assert len(key) == 64
    assert all(c in "0123456789abcdef" for c in key)
    assert DEMO.secret not in key
    assert DEMO.token not in key
    others = {
        keys.request(basic(DEMO.token, "other"), "u-demo", "/p", [("a", "1"), ("b", "2")]),
        keys.request(auth, "u-second", "/p", [("a", "1"), ("b", "2")]),
        keys.request(auth, "u-demo", "/q", [("a", "1"), ("b", "2")]),
        keys.request(auth, "u-demo", "/p", [("a", "1"), ("b", "3")]),
        KeyedHashes(b"other key").request(auth, "u-demo", "/p", [("a", "1"), ("b", "2")]),
    }
    assert key not in others
    assert len(others) == 5


def test_no_two_kinds_of_key_are_ever_the_same() -> None:
    keys = KeyedHashes(b"k")
    auth = basic(DEMO.token, DEMO.secret)

    made = {
        keys.request(auth, "u-demo", "/p", []),
        keys.call(auth, "u-demo", "/p"),
        keys.account(auth),
        keys.pair(auth, "u-demo"),
        keys.identity(auth, "u-demo"),
    }

    assert len(made) == 5


def test_keys_are_what_they_were_under_the_cache_module() -> None:
    # Redis holds cache entries and pacing schedules under these keys, shared by replicas
    # of different versions during a deploy: moving the class must not change one byte.
    keys = KeyedHashes(b"k")

    def expected(parts: list[object]) -> str:
        return hmac.new(b"k", orjson.dumps(parts), hashlib.sha256).hexdigest()

    assert keys.request("a", "u", "/p", [("b", "2"), ("a", "1")]) == expected(
        ["request", "a", "u", "/p", [["a", "1"], ["b", "2"]]]
    )
    assert keys.call("a", "u", "c-1") == expected(["call", "a", "u", "c-1"])
    assert keys.account("t") == expected(["account", "t"])
    assert keys.pair("a", "u") == expected(["pair", "a", "u"])
    assert keys.identity("a", "u") == expected(["identity", "a", "u"])
    assert KeyedHashes(b"k").shared
    assert not KeyedHashes(None).shared
