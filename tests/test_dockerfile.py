"""The Dockerfile, without a Docker engine: linted with hadolint, parsed and checked, then
its very install and start commands replayed on this machine and the result queried.

The replay is honest about what it is not. It runs the build stage's RUN lines with the
same minor Python as the image's base tag (3.12) when this machine has one (a `python3.12`
on the PATH that works, or a pyenv 3.12): the patch level may differ (the image pins
3.12.12; pyenv here has 3.12.1), and the base image's Debian packages are not there. Where
no 3.12 can be found it falls back to the Python running the tests, and says so in the
test's output: the lock is universal (it holds every wheel's hash for 3.11 and up), so the
install is the same command either way.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from gateway.graphiql import GRAPHIQL_JS
from gateway.sandbox import ACCOUNTS, credential_headers
from tests.conftest import Gateway
from tests.test_lock import pins

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


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True
    )

    assert done.returncode == 0, done.stdout + done.stderr


def test_dependencies_come_from_the_hashed_lock_before_the_source_is_copied() -> None:
    build, _ = stages()
    order = [(kind, value) for kind, value in build.instructions if kind in {"COPY", "RUN"}]
    copies = [value for kind, value in order if kind == "COPY"]
    install_deps = next(i for i, (k, v) in enumerate(order) if "-r requirements.lock" in v)
    copy_source = order.index(("COPY", "gateway ./gateway"))

    assert copies[0] == "requirements.lock ./"
    assert "--require-hashes" in order[install_deps][1]
    assert order.index(("COPY", "requirements.lock ./")) < install_deps < copy_source
    assert not any("requirements.txt" in value for _, value in order)


BUILD_LOCK = ROOT / "requirements-build.lock"


def test_the_build_backend_comes_from_a_hashed_lock() -> None:
    build, _ = stages()
    runs = build.values("RUN")
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    lock = pins(BUILD_LOCK.read_text())
    given = (ROOT / "requirements-build.in").read_text().splitlines()

    # The lock pins pyproject.toml's [build-system] requires, each with hashes.
    assert [line for line in given if line and not line.startswith("#")] == backend
    for raw in backend:
        requirement = Requirement(raw)
        version, _ = lock[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), raw
    assert all(hashes for _, hashes in lock.values())
    assert "requirements-build.lock ./" in build.values("COPY")
    assert any("--require-hashes -r requirements-build.lock" in run for run in runs)
    # Every pip install either checks hashes or reads nothing but local files; building
    # the project never lets pip fetch a backend of its own (build isolation).
    for run in runs:
        for command in run.split("&&"):
            if re.search(r"pip\"? install", command):
                assert "--require-hashes" in command or "--no-index" in command, command
            if re.search(r"pip\"? (install|wheel)\b.*\s\.(\s|$)", command):
                assert "--no-build-isolation" in command, command
    assert any("--no-build-isolation" in run for run in runs)
    assert "!requirements-build.lock" in (ROOT / ".dockerignore").read_text().splitlines()


def test_runtime_runs_as_a_fixed_non_root_user_with_a_healthcheck_and_the_serve_command() -> None:
    _, runtime = stages()
    [user] = runtime.values("USER")
    [healthcheck] = runtime.values("HEALTHCHECK")
    [entrypoint] = runtime.values("ENTRYPOINT")
    [cmd] = runtime.values("CMD")

    uid = user.split(":")[0]
    assert uid.isdigit()
    assert int(uid) >= 1000
    assert any(f"--uid {uid}" in run for run in runtime.values("RUN"))
    assert runtime.instructions.index(("USER", user)) > max(
        i for i, (kind, _) in enumerate(runtime.instructions) if kind in {"RUN", "COPY"}
    )
    # `docker run IMAGE serve --sandbox` replaces CMD only: the entrypoint is the command.
    assert json.loads(entrypoint) == ["catapult-gateway"]
    assert json.loads(cmd) == ["serve", "--host", "0.0.0.0"]  # noqa: S104
    # The probe finds the port the process listens on; it reads no setting.
    assert json.loads(healthcheck.split("CMD", 1)[1]) == ["python", "/opt/healthcheck.py"]
    assert "GATEWAY_PORT" not in healthcheck
    probe = (ROOT / "docker" / "healthcheck.py").read_text()
    assert "/healthz" in probe
    assert not re.search(r"environ[^\n]*GATEWAY_", probe)


def _probe(pid: int) -> int:
    """The image's HEALTHCHECK script, told which process is the entrypoint."""
    script = ROOT / "docker" / "healthcheck.py"
    environ = {**os.environ, "HEALTHCHECK_PID": str(pid)}
    return subprocess.run([sys.executable, str(script)], env=environ, timeout=30).returncode


def test_the_health_probe_finds_the_port_the_process_listens_on(
    loopback_gateway: Gateway,
) -> None:
    # This process serves the gateway (on a port no setting names) and the sandbox, whose
    # /healthz is a 404: the probe tries each listening socket and one answers.
    assert _probe(os.getpid()) == 0


def test_the_health_probe_passes_for_the_standalone_sandbox() -> None:
    # `docker run IMAGE sandbox`: the entrypoint serves /__health, not /healthz.
    port = _free_port()
    command = Path(sys.executable).parent / "catapult-gateway"
    sandbox = subprocess.Popen(
        [str(command), "sandbox", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/__health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert sandbox.poll() is None, "the sandbox exited"
            assert time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.1)

        assert _probe(sandbox.pid) == 0
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)


def test_the_health_probe_fails_for_a_process_that_listens_nowhere() -> None:
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert _probe(idle.pid) == 1
    finally:
        idle.kill()
        idle.wait()


def test_settings_come_only_from_the_environment() -> None:
    _, runtime = stages()

    assert runtime.values("COPY") == [
        "--from=build /opt/venv /opt/venv",
        "docker/healthcheck.py /opt/healthcheck.py",
    ]
    for value in runtime.values("ENV"):
        assert not any(name.startswith("GATEWAY_") for name in env_pairs(value))


def test_graphiql_files_reach_the_image_with_the_package_and_no_npm() -> None:
    build, runtime = stages()
    ignored = (ROOT / ".dockerignore").read_text().splitlines()

    # gateway/static/vendor/ is part of the package: copied with it, never fetched.
    assert "gateway ./gateway" in build.values("COPY")
    assert not any("vendor" in line for line in ignored)
    assert (ROOT / "gateway" / "static" / "vendor" / "graphiql.min.js").is_file()
    for stage in (build, runtime):
        assert not any("npm" in run or "graphiql fetch" in run for run in stage.values("RUN"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def image_python(image: str) -> Path:
    """This machine's Python of the image's minor version, else the one running the tests."""
    version = re.match(r"python:(\d+\.\d+)", image)
    assert version, image
    minor = version.group(1)
    candidates = [shutil.which(f"python{minor}") or ""]
    candidates += sorted(
        glob.glob(os.path.expanduser(f"~/.pyenv/versions/{minor}.*/bin/python{minor}"))
    )
    candidates += [f"/usr/local/bin/python{minor}", f"/usr/bin/python{minor}"]
    for candidate in candidates:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        probe = [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        done = subprocess.run(probe, capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == minor:
            return Path(candidate)
    print(f"no Python {minor} here: replaying with {sys.version.split()[0]} instead")
    return Path(sys.executable)


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
                    ignore=shutil.ignore_patterns("__pycache__"),
                )
            else:
                if target.endswith("/"):
                    destination.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, destination)


@pytest.mark.slow
def test_the_image_commands_install_and_serve(tmp_path: Path) -> None:
    build, runtime = stages()
    emulator = Emulator(tmp_path)
    # A clean environment, as in a container: only the image's Python on the PATH.
    python = image_python(build.image)
    base = {
        "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", str(tmp_path)),
    }
    emulator.run_stage(build, dict(base))
    env = dict(base)
    # Creating the user needs root in an image, not here; everything else runs.
    emulator.run_stage(runtime, env, skip=("groupadd",))
    assert Path(env["PATH"].split(":")[0]) == emulator.path("/opt/venv/bin")
    venv_python = emulator.path("/opt/venv/bin/python")
    version = subprocess.run(
        [venv_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"replayed with Python {version} for image {build.image}")

    # `docker run IMAGE serve --sandbox --port N`: the entrypoint plus the run's arguments,
    # on loopback here (the image's CMD says 0.0.0.0), the port by flag, not by setting.
    port = _free_port()
    [entrypoint] = runtime.values("ENTRYPOINT")
    [healthcheck] = runtime.values("HEALTHCHECK")
    arguments = ["serve", "--sandbox", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        [*json.loads(entrypoint), *arguments],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        probe = [emulator.remap(part) for part in json.loads(healthcheck.split("CMD", 1)[1])]
        # In the container the entrypoint is PID 1; here the probe is told its pid.
        probe_env = {**env, "HEALTHCHECK_PID": str(server.pid)}
        while subprocess.run(probe, env=probe_env, capture_output=True).returncode != 0:
            assert server.poll() is None, server.communicate()[1].decode()
            assert time.monotonic() < deadline, "the HEALTHCHECK never passed"
            time.sleep(0.2)
        response = httpx.post(
            f"{url}/graphql",
            json={"query": "{ calls(size: 2) { id state } }"},
            headers=credential_headers(ACCOUNTS[0]),
        )
        asset = httpx.get(url + GRAPHIQL_JS.local_url)
    finally:
        server.terminate()
        server.communicate(timeout=30)

    assert response.status_code == 200
    assert len(response.json()["data"]["calls"]) == 2
    assert asset.status_code == 200  # GraphiQL's files are in the installed package
    assert server.returncode == 0
