"""A request still running when the shutdown's grace period ends gets a coded 503."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import pytest

from gateway.app import create_app
from gateway.config import load_settings
from gateway.sandbox import credential_headers
from tests.conftest import DEMO, Sandbox
from tests.servers import serve


@pytest.mark.server_errors  # the 503 is the point
@pytest.mark.parametrize("given_id", ["cut-short", None], ids=["caller-id", "no-caller-id"])
def test_a_request_cut_short_by_shutdown_gets_a_coded_answer(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture, given_id: str | None
) -> None:
    # The upstream answers long after the test server's 2 s grace period.
    sandbox.faults(latency_ms=15_000)
    settings = load_settings(
        {
            "GATEWAY_UPSTREAM_URL": sandbox.url,
            "GATEWAY_UPSTREAM_RATE": "0",
            "GATEWAY_UPSTREAM_TIMEOUT": "20",
            "GATEWAY_REQUEST_TIMEOUT": "30",
        }
    )
    answers: list[httpx.Response] = []
    with (
        caplog.at_level(logging.INFO, logger="gateway.request"),
        serve(create_app(settings)) as url,
    ):

        def ask() -> None:
            answers.append(
                httpx.post(
                    f"{url}/graphql",
                    json={"query": "{ calls { id } }"},
                    headers={
                        **credential_headers(DEMO),
                        **({"X-Request-Id": given_id} if given_id else {}),
                    },
                    timeout=30,
                )
            )

        caller = threading.Thread(target=ask)
        caller.start()
        deadline = time.monotonic() + 10
        while not sandbox.requests():
            assert time.monotonic() < deadline, "the request never reached the upstream"
            time.sleep(0.05)
    # Leaving `serve` shut the server down: 2 s of grace, then the request was cancelled.
    caller.join(timeout=30)

    [answer] = answers
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    request_id = answer.headers["x-request-id"]
    if given_id:
        assert request_id == given_id
    [error] = answer.json()["errors"]
    assert error["extensions"] == {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    assert "stopped" in error["message"]
    # The request's log line says what the caller got: one id, the status, the code.
    [line] = [r for r in caplog.records if r.getMessage() == "graphql request"]
    logged = {k: getattr(line, k) for k in ("request_id", "status", "error_codes")}
    assert logged == {
        "request_id": request_id,
        "status": 503,
        "error_codes": ["INTERNAL_SERVER_ERROR"],
    }
