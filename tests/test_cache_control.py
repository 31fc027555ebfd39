"""The one reader of a request's Cache-Control: `no-cache` wherever it is written."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from gateway.cache_control import wants_fresh


@pytest.mark.parametrize(
    ("values", "fresh"),
    [
        pytest.param([], False, id="absent"),
        pytest.param(["no-cache"], True, id="alone"),
        pytest.param(["No-Cache"], True, id="any-case"),
        pytest.param(["max-age=0, no-cache"], True, id="among-directives"),
        pytest.param(["max-age=0", "no-cache"], True, id="second-header-line"),
        pytest.param(['no-cache="set-cookie"'], True, id="with-field-names"),
        pytest.param(["no-store"], False, id="no-store-is-not-no-cache"),
        pytest.param(["max-age=0"], False, id="max-age-zero"),
        pytest.param(["x-no-cache"], False, id="a-longer-name"),
    ],
)
def test_no_cache_is_read_from_every_directive_of_every_line(
    values: list[str], fresh: bool
) -> None:
    headers = Headers(raw=[(b"cache-control", value.encode()) for value in values])

    assert wants_fresh(headers) is fresh
