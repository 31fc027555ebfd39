"""The `catapult-gateway` command, run as a real subprocess, and the schema it exports."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from graphql import get_introspection_query, graphql_sync

from gateway.sandbox import ACCOUNTS
from gateway.schema import build_schema, graphql_core_schema, print_sdl
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "gateway"]
DEMO = ACCOUNTS[0]
DEMO_AUTHORIZATION = "Basic " + base64.b64encode(f"{DEMO.token}:{DEMO.secret}".encode()).decode()


def clean_environment(**extra: str) -> dict[str, str]:
    """The test's environment without GATEWAY_* variables, plus `extra`."""
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    return {**environ, **extra}


def run(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_environment(**environ),
        cwd=ROOT,
        check=False,
    )


@contextmanager
def running(*args: str, health: str, port: int) -> Iterator[subprocess.Popen[str]]:
    """Start the command, wait until `health` answers on `port`, terminate it afterwards."""
    process = subprocess.Popen(
        [*COMMAND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(),
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise AssertionError(f"exited {process.returncode}: {process.stderr.read()}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"http://127.0.0.1:{port}{health}", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the command did not start serving")
            time.sleep(0.05)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_export_schema_equals_the_checked_in_schema() -> None:
    result = run("export-schema")

    assert result.returncode == 0
    assert result.stdout == (ROOT / "schema.graphql").read_text()
    assert result.stdout == print_sdl(build_schema())


BAD_SETTINGS = [
    pytest.param(["--port", "eighty"], {}, "GATEWAY_PORT", id="port-flag"),
    pytest.param([], {"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT", id="port-variable"),
    pytest.param(["--upstream-url", "nope"], {}, "GATEWAY_UPSTREAM_URL", id="upstream-url"),
    pytest.param(
        [],
        {"GATEWAY_UPSTREAM_TIMEOUT": "30", "GATEWAY_REQUEST_TIMEOUT": "5"},
        "GATEWAY_UPSTREAM_TIMEOUT",
        id="timeouts",
    ),
]


@pytest.mark.parametrize(("flags", "environ", "name"), BAD_SETTINGS)
def test_serve_with_a_bad_setting_exits_2_with_one_line(
    flags: list[str], environ: dict[str, str], name: str
) -> None:
    result = run("serve", *flags, **environ)

    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("catapult-gateway: ")
    assert name in line
    assert "Traceback" not in result.stderr


def test_serve_sandbox_prints_the_way_in_and_answers_a_query() -> None:
    port = free_port()

    with running("serve", "--sandbox", "--port", str(port), health="/readyz", port=port) as served:
        response = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": "{ calls(size: 3) { id state } }"},
            headers={"Authorization": DEMO_AUTHORIZATION, "X-Catapult-User-Id": DEMO.user_id},
            timeout=10,
        )
        served.terminate()
        banner, _ = served.communicate(timeout=10)

    assert len(response.json()["data"]["calls"]) == 3
    assert f"http://127.0.0.1:{port}/graphql" in banner
    for account in ACCOUNTS:
        assert account.token in banner
        assert account.secret in banner
        assert account.user_id in banner
    assert DEMO_AUTHORIZATION in banner


def test_the_sandbox_command_serves_the_sandbox() -> None:
    port = free_port()

    with running("sandbox", "--port", str(port), health="/__health", port=port):
        response = httpx.get(
            f"http://127.0.0.1:{port}/v1/users/{DEMO.user_id}/calls",
            params={"size": 2},
            auth=(DEMO.token, DEMO.secret),
            timeout=10,
        )

    assert response.status_code == 200
    assert len(response.json()) == 2
    assert "next" in response.headers["link"]


# -- descriptions, as GraphiQL's docs pane reads them ------------------------------------------

# Federation's built-ins, which strawberry adds and describes (or not) itself.
FEDERATION = {"_Any", "_Entity", "_Service", "_FieldSet", "_entities", "_service",
              "link__Import", "link__Purpose"}  # fmt: skip
BUILT_IN_SCALARS = {"String", "Int", "Float", "Boolean", "ID"}


def test_every_type_field_and_argument_of_ours_has_a_description() -> None:
    result = graphql_sync(graphql_core_schema(build_schema()), get_introspection_query())
    assert result.errors is None
    assert result.data is not None

    missing: list[str] = []
    for type_ in result.data["__schema"]["types"]:
        name = type_["name"]
        if name.startswith("__") or name in FEDERATION | BUILT_IN_SCALARS:
            continue
        if not type_["description"]:
            missing.append(name)
        for field in (type_["fields"] or []) + (type_["inputFields"] or []):
            if field["name"] in FEDERATION:
                continue
            if not field["description"]:
                missing.append(f"{name}.{field['name']}")
            for argument in field.get("args") or []:
                if not argument["description"]:
                    missing.append(f"{name}.{field['name']}({argument['name']})")
        for value in type_["enumValues"] or []:
            if not value["description"]:
                missing.append(f"{name}.{value['name']}")

    assert missing == []
