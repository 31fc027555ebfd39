"""The `catapult-gateway` command, run as a real subprocess, and the schema it exports."""

from __future__ import annotations

import ast
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from graphql import (
    build_ast_schema,
    get_introspection_query,
    graphql_sync,
    parse,
    specified_directives,
)

import gateway.cli
from gateway import __version__
from gateway.sandbox import ACCOUNTS
from gateway.schema import (
    FEDERATION_TYPES,
    build_schema,
    graphql_core_schema,
    print_client_sdl,
    print_sdl,
)
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
def running(*args: str, health: str, port: int, **environ: str) -> Iterator[subprocess.Popen[str]]:
    """Start the command, wait until `health` answers on `port`, terminate it afterwards."""
    process = subprocess.Popen(
        [*COMMAND, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_environment(**environ),
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


def test_export_schema_client_equals_the_checked_in_client_schema() -> None:
    result = run("export-schema", "--client")

    assert result.returncode == 0
    assert result.stdout == (ROOT / "schema.client.graphql").read_text()
    assert result.stdout == print_client_sdl(build_schema())


def test_the_client_schema_is_the_subgraph_schema_without_federation() -> None:
    subgraph = build_ast_schema(parse((ROOT / "schema.graphql").read_text()), assume_valid=True)
    # Plain SDL: graphql-core builds it with no directive or type it does not know.
    client = build_ast_schema(parse((ROOT / "schema.client.graphql").read_text()))

    assert not {d.name for d in client.directives} - {d.name for d in specified_directives}
    ours = {name for name in subgraph.type_map if name not in FEDERATION_TYPES}
    assert set(client.type_map) == ours
    query = client.query_type
    assert query is not None
    assert set(query.fields) == {"calls", "callsConnection", "call"}
    for name, type_ in client.type_map.items():
        if name.startswith("__"):
            continue
        before = subgraph.type_map[name]
        assert type_.description == before.description, name
        if hasattr(type_, "fields") and name != "Query":
            assert set(type_.fields) == set(before.fields), name  # type: ignore[attr-defined]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at its top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
    return found


def test_the_cli_imports_neither_the_app_nor_the_metrics() -> None:
    # uvicorn imports the app in each worker through the factory string; the metrics
    # module (and so prometheus-client) must come after MULTIPROC_ENV is set.
    imported = imported_modules(Path(gateway.cli.__file__))

    assert not {"gateway.app", "gateway.observability.metrics"} & imported


def test_version() -> None:
    result = run("--version")

    assert result.returncode == 0
    assert result.stdout == f"catapult-gateway {__version__}\n"


# A value from a flag is named by its flag, one from the environment by its variable.
BAD_SETTINGS = [
    pytest.param(["serve", "--port", "eighty"], {}, "--port", id="serve-port-flag"),
    pytest.param(["serve", "--port", "99999"], {}, "--port", id="serve-port-flag-range"),
    pytest.param(["serve"], {"GATEWAY_PORT": "eighty"}, "GATEWAY_PORT", id="serve-port-variable"),
    pytest.param(
        ["serve", "--port", "99999"],
        {"GATEWAY_PORT": "8000"},
        "--port",
        id="serve-flag-over-variable",
    ),
    pytest.param(
        ["serve", "--port", "8000"],
        {"GATEWAY_WORKERS": "0"},
        "GATEWAY_WORKERS",
        id="serve-variable-beside-flag",
    ),
    pytest.param(["serve", "--workers", "0"], {}, "--workers", id="serve-workers-flag"),
    pytest.param(
        ["serve", "--upstream-url", "nope"], {}, "--upstream-url", id="serve-upstream-url-flag"
    ),
    pytest.param(
        ["serve"],
        {"GATEWAY_UPSTREAM_TIMEOUT": "30", "GATEWAY_REQUEST_TIMEOUT": "5"},
        "GATEWAY_UPSTREAM_TIMEOUT",
        id="serve-timeouts",
    ),
    # Review findings: each started (or crashed with a traceback and status 1) before.
    pytest.param(["serve", "--host", ""], {}, "--host", id="serve-host-flag-empty"),
    pytest.param(["serve"], {"GATEWAY_HOST": ""}, "GATEWAY_HOST", id="serve-host-variable-empty"),
    pytest.param(["serve", "--sandbox", "--port", "0"], {}, "GATEWAY_PORT", id="sandbox-port-0"),
    pytest.param(["serve"], {"GATEWAY_CACHE_TTL": "inf"}, "GATEWAY_CACHE_TTL", id="cache-ttl-inf"),
    pytest.param(
        ["serve"], {"GATEWAY_UPSTREAM_RATE": "inf"}, "GATEWAY_UPSTREAM_RATE", id="rate-inf"
    ),
    pytest.param(
        ["serve"],
        {"GATEWAY_CURSOR_KEY": "replace-me-with-openssl-rand-hex-32"},
        "GATEWAY_CURSOR_KEY",
        id="cursor-key-placeholder",
    ),
    pytest.param(["sandbox", "--host", ""], {}, "--host", id="sandbox-host-flag-empty"),
    pytest.param(["sandbox", "--port", "99999"], {}, "--port", id="sandbox-port-flag-range"),
    pytest.param(["sandbox", "--port", "-1"], {}, "--port", id="sandbox-port-flag-negative"),
    pytest.param(
        ["sandbox"],
        {"GATEWAY_SANDBOX_PORT": "99999"},
        "GATEWAY_SANDBOX_PORT",
        id="sandbox-port-variable",
    ),
    pytest.param(
        ["sandbox", "--latency-ms", "slow"], {}, "--latency-ms", id="sandbox-latency-flag"
    ),
    pytest.param(
        ["sandbox"],
        {"GATEWAY_SANDBOX_RATE_LIMIT": "maybe"},
        "GATEWAY_SANDBOX_RATE_LIMIT",
        id="sandbox-rate-limit-variable",
    ),
]


@pytest.mark.parametrize(("args", "environ", "name"), BAD_SETTINGS)
def test_a_bad_setting_exits_2_with_one_line_naming_its_source(
    args: list[str], environ: dict[str, str], name: str
) -> None:
    result = run(*args, **environ)

    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"catapult-gateway: {name}")
    assert line.removeprefix(f"catapult-gateway: {name}")[0] in ": "
    assert "Traceback" not in result.stderr


def test_a_taken_port_fails_before_the_banner() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run("serve", "--sandbox", "--port", str(port))

    assert result.returncode == 3  # uvicorn's start-up failure status
    assert "is serving" not in result.stdout
    [line] = result.stderr.splitlines()
    # Before: only `[Errno 98] Address already in use`.
    message = json.loads(line)["message"]
    assert message == (
        f"cannot listen on 127.0.0.1 port {port}: Address already in use; "
        "choose another with --port/GATEWAY_PORT or --host/GATEWAY_HOST"
    )


@pytest.mark.parametrize(
    ("args", "health"),
    [
        pytest.param(["serve", "--sandbox"], "/readyz", id="serve"),
        pytest.param(["sandbox"], "/__health", id="sandbox"),
    ],
)
def test_sigterm_stops_gracefully_with_status_0(args: list[str], health: str) -> None:
    port = free_port()

    with running(*args, "--port", str(port), health=health, port=port) as process:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

    assert process.returncode == 0


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


def started_log(**environ: str) -> str:
    """What `serve --sandbox` logs (JSON lines) from its start until it is ready and stopped,
    run with `environ`."""
    port = free_port()
    with running(
        "serve",
        "--sandbox",
        "--port",
        str(port),
        health="/readyz",
        port=port,
        GATEWAY_LOG_FORMAT="json",
        **environ,
    ) as served:
        served.terminate()
        _, log = served.communicate(timeout=10)
    return log


def test_serve_warns_about_a_misspelt_setting_once() -> None:
    log = started_log(GATEWAY_CACHE_TLL="3", GATEWAY_TEST_ANYTHING="1")

    warnings = [line for line in log.splitlines() if "is not a setting" in line]
    assert len(warnings) == 1, log
    assert "GATEWAY_CACHE_TLL" in warnings[0]
    assert "did you mean GATEWAY_CACHE_TTL?" in warnings[0]
    assert "GATEWAY_TEST_ANYTHING" not in log


def test_serve_warns_that_a_pacing_file_without_a_cache_key_is_not_shared(
    tmp_path: Path,
) -> None:
    # Each `serve` draws its own cache key, and the file keys accounts by an HMAC under it:
    # two servers given one GATEWAY_PACING_FILE each paced every account alone, silently.
    log = started_log(GATEWAY_PACING_FILE=str(tmp_path / "pacing"))

    warnings = [line for line in log.splitlines() if "GATEWAY_PACING_FILE is set" in line]
    assert len(warnings) == 1, log
    assert "GATEWAY_CACHE_KEY is unset" in warnings[0]


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


# -- scripts/ensure-venv: the demo's and the test command's set-up, done only when needed ----

FAKE_PYTHON = """#!/bin/sh
# Records how it was called; `-m venv DIR` makes DIR/bin/python, which is this script too.
echo "$0 $*" >> "$CALLS"
if [ "$1" = "--version" ]; then echo "Python 3.99.0"; fi
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; fi
exit 0
"""


def test_ensure_venv_installs_only_when_something_changed(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "ensure-venv", project / "scripts")
    (project / "pyproject.toml").write_text('[project]\nname = "x"\n')
    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "python3").write_text(FAKE_PYTHON)
    (tools / "python3").chmod(0o755)
    calls = tmp_path / "calls"

    def ensure(name: str, spec: str) -> list[str]:
        calls.write_text("")
        subprocess.run(
            ["bash", str(project / "scripts" / "ensure-venv"), name, spec],
            env={**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "CALLS": str(calls)},
            check=True,
            timeout=30,
        )
        return [line.split(" ", 1)[1] for line in calls.read_text().splitlines()]

    installs = ["-m pip install --quiet --upgrade pip", "-m pip install --quiet -e ."]
    assert ensure("demo", ".") == ["--version", "-m venv .venv", *installs]
    assert ensure("demo", ".") == ["--version"]  # a re-run: nothing to do
    assert ensure("test", ".[dev]")[-1] == "-m pip install --quiet -e .[dev]"
    assert ensure("demo", ".") == ["--version"]
    (project / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    assert ensure("demo", ".") == ["--version", "-m venv .venv", *installs]
    assert ensure("demo", ".") == ["--version"]


@pytest.mark.parametrize("script", ["demo", "test"])
def test_the_scripts_set_up_through_ensure_venv(script: str) -> None:
    text = (ROOT / "scripts" / script).read_text()

    assert "scripts/ensure-venv" in text
    assert "pip install" not in text


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["serve", "--sandbox"], id="serve-sandbox"),
        pytest.param(["sandbox"], id="sandbox"),
    ],
)
def test_the_port_listens_before_any_line_says_the_server_runs(args: list[str]) -> None:
    # Each line that says where the server is (uvicorn's "running on", the GraphiQL URL):
    # when it is printed, a connection is accepted at once (no retry) and answered.
    port = free_port()
    process = subprocess.Popen(
        [*COMMAND, *args, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=clean_environment(),
        cwd=ROOT,
    )
    health = "/healthz" if args[0] == "serve" else "/__health"
    answered: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "Uvicorn running on" not in line and "GraphiQL:" not in line:
                continue
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
                sock.sendall(
                    f"GET {health} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
                )
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            answered.append(line)
            if len(answered) == (2 if args[0] == "serve" else 1):
                break
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    assert len(answered) == (2 if args[0] == "serve" else 1), answered
