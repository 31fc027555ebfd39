"""The Dockerfile, without a Docker engine: parsed and checked, then its very install and
start commands run in a fresh virtual environment and the result queried."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from dockerfile_parse import DockerfileParser

from gateway.app import credential_headers
from gateway.sandbox import ACCOUNTS

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Stage:
    name: str
    image: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]


def stages() -> list[Stage]:
    parser = DockerfileParser(str(ROOT / "Dockerfile"))
    args: dict[str, str] = {}
    result: list[Stage] = []
    for item in parser.structure:
        kind, value = item["instruction"], item["value"]
        if kind == "ARG" and not result:
            name, _, default = value.partition("=")
            args[name] = default
        elif kind == "FROM":
            image, _, name = value.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            result.append(Stage(name.strip(), image.strip()))
        elif kind != "COMMENT":
            result[-1].instructions.append((kind, value))
    return result


def env_pairs(value: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in shlex.split(value))


def test_multi_stage_with_a_pinned_slim_python_base() -> None:
    build, runtime = stages()

    assert [build.name, runtime.name] == ["build", "runtime"]
    for stage in (build, runtime):
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", stage.image)


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    build, _ = stages()
    order = [(kind, value) for kind, value in build.instructions if kind in {"COPY", "RUN"}]
    copies = [value for kind, value in order if kind == "COPY"]
    install_deps = next(i for i, (k, v) in enumerate(order) if "-r requirements.txt" in v)
    copy_source = order.index(("COPY", "gateway ./gateway"))

    assert copies[0] == "pyproject.toml ./"
    assert order.index(("COPY", "pyproject.toml ./")) < install_deps < copy_source


def test_runtime_runs_as_a_fixed_non_root_user_with_a_healthcheck_and_the_serve_command() -> None:
    _, runtime = stages()
    [user] = runtime.values("USER")
    [healthcheck] = runtime.values("HEALTHCHECK")
    [cmd] = runtime.values("CMD")

    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 1000
    assert any(f"--uid {uid}" in run for run in runtime.values("RUN"))
    assert runtime.instructions.index(("USER", user)) > max(
        i for i, (kind, _) in enumerate(runtime.instructions) if kind in {"RUN", "COPY"}
    )
    assert "/healthz" in healthcheck
    assert "urllib.request" in healthcheck
    assert "curl" not in healthcheck
    assert json.loads(cmd) == ["catapult-gateway", "serve", "--host", "0.0.0.0"]  # noqa: S104


def test_settings_come_only_from_the_environment() -> None:
    _, runtime = stages()

    assert runtime.values("COPY") == ["--from=build /opt/venv /opt/venv"]
    for value in runtime.values("ENV"):
        assert not any(name.startswith("GATEWAY_") for name in env_pairs(value))


def test_the_build_stage_fetches_graphiql_with_the_checked_command() -> None:
    build, runtime = stages()
    runs = build.values("RUN")
    fetch = runs.index('"$VIRTUAL_ENV/bin/python" -m gateway.graphiql fetch gateway/static/vendor')
    install = next(i for i, run in enumerate(runs) if "install --no-deps ." in run)

    assert fetch < install
    assert any("install -y --no-install-recommends npm" in run for run in runs)
    assert not any("npm" in run for run in runtime.values("RUN"))
    copies = build.values("COPY")
    assert copies.index("gateway/__init__.py gateway/graphiql.py ./gateway/") < copies.index(
        "gateway ./gateway"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Emulator:
    """Runs a stage's WORKDIR, ENV, COPY and RUN instructions on this machine.

    The image's absolute paths (`/opt/venv`, `/src`, ...) are mapped below a temporary
    directory; RUN commands run with bash exactly as written, less BuildKit's `--mount`.
    """

    # Every absolute path the Dockerfile writes to lies below one of these.
    TOPS = ("/opt", "/src", "/assets")

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, image_path: str) -> Path:
        if not image_path.startswith(self.TOPS):
            raise AssertionError(f"the Dockerfile uses a path this test does not map: {image_path}")
        return self.root / image_path.strip("/")

    def remap(self, text: str) -> str:
        for top in self.TOPS:
            text = re.sub(rf"(?<![\w/.]){re.escape(top)}(?=/|\b)", f"{self.root}{top}", text)
        return text

    def run_stage(self, stage: Stage, env: dict[str, str], skip: tuple[str, ...] = ()) -> None:
        workdir = self.root
        for kind, value in stage.instructions:
            if kind == "WORKDIR":
                workdir = self.path(value)
                workdir.mkdir(parents=True, exist_ok=True)
            elif kind == "ENV":
                for key, raw in env_pairs(value).items():
                    env[key] = self.remap(raw).replace("$PATH", env["PATH"])
            elif kind == "COPY":
                self.copy(value, workdir)
            elif kind == "RUN" and not value.startswith(skip):
                command = self.remap(re.sub(r"^--mount=\S+\s+", "", value))
                subprocess.run(["bash", "-ec", command], cwd=workdir, env=env, check=True)

    def copy(self, value: str, workdir: Path) -> None:
        parts = value.split()
        source_stage = None
        if parts[0].startswith("--from="):
            source_stage = parts.pop(0).removeprefix("--from=")
        *sources, target = parts
        destination = workdir / target if not target.startswith("/") else self.path(target)
        for source in sources:
            origin = self.path(source) if source_stage else ROOT / source
            if origin == destination:
                continue  # the build stage's venv is already where the runtime wants it
            if origin.is_dir():
                shutil.copytree(
                    origin,
                    destination,
                    dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "vendor"),
                )
            else:
                if target.endswith("/"):
                    destination.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, destination)


@pytest.mark.slow
def test_the_image_commands_install_and_serve(tmp_path: Path) -> None:
    build, runtime = stages()
    emulator = Emulator(tmp_path)
    # A clean environment, as in a container: only this Python on the PATH.
    base = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(tmp_path)),
    }
    # npm comes from Debian in the image; this machine has it already.
    assert shutil.which("npm"), "the GraphiQL fetch needs npm"
    emulator.run_stage(build, dict(base), skip=("apt-get",))
    env = dict(base)
    # Creating the user needs root in an image, not here; everything else runs.
    emulator.run_stage(runtime, env, skip=("groupadd",))
    assert Path(env["PATH"].split(":")[0]) == emulator.path("/opt/venv/bin")

    port = _free_port()
    env.update(GATEWAY_SANDBOX="true", GATEWAY_PORT=str(port))
    [cmd] = runtime.values("CMD")
    [healthcheck] = runtime.values("HEALTHCHECK")
    server = subprocess.Popen(
        json.loads(cmd), env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        probe = json.loads(healthcheck.split("CMD", 1)[1])
        while subprocess.run(probe, env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, server.communicate()[1].decode()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
        response = httpx.post(
            f"{url}/graphql",
            json={"query": "{ calls(size: 2) { id state } }"},
            headers=credential_headers(ACCOUNTS[0]),
        )
        asset = httpx.get(f"{url}/graphiql/assets/graphiql.min.js")
    finally:
        server.terminate()
        server.communicate(timeout=30)

    assert response.status_code == 200
    assert len(response.json()["data"]["calls"]) == 2
    assert asset.status_code == 200  # GraphiQL's files are in the installed package
    assert server.returncode == 0
