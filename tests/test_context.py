"""The seam the schema reads through: how a tolerated upstream oddity is shown to callers.

(The factory that makes each request's Context is tested in tests/test_context_factory.py.)
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.calls import BadRecord
from gateway.context import UpstreamWarning, left_out_warning, oversized_page_warning


@pytest.mark.parametrize(
    ("warning", "shown"),
    [
        pytest.param(
            left_out_warning(BadRecord("c-\u202e9", "a call without `from`"), ("calls", 2)),
            {
                "message": "The upstream sent a call without `from`; it was left out of this list.",
                "path": ["calls", 2],
                "callId": "c-\ufffd9",  # shown and logged without it
                "code": "UPSTREAM_BAD_RESPONSE",
            },
            id="left-out-with-a-bidi-override-in-its-id",
        ),
        pytest.param(
            oversized_page_warning(3, 25, ("calls",)),
            {
                "message": "The upstream sent 3 more calls than the 25 asked for; "
                "only the first 25 are served.",
                "path": ["calls"],
                "code": "UPSTREAM_BAD_RESPONSE",
            },
            id="oversized-page-without-a-call-id",
        ),
    ],
)
def test_a_warning_is_shown_with_its_path_call_id_and_code(
    warning: UpstreamWarning, shown: dict[str, Any]
) -> None:
    assert warning.as_json() == shown
